"""Memory reads, forward + backward: SDPA against the plain three-op form (``plain_retrieval``).

    python benchmarks/bench_readout.py [--precision fp32 bf16] [--T 256 512 1024 2048] [--repeats 3]

Rows: the persistent memory's read (4 heads of 64, 896 pairs, B x T = 1024 and 4096 queries folded
into one axis) and the contextual memory's causal read (B 4, T - 1 shifted queries), with and without
dropout 0.05 on the weights. It prints both times, SDPA / plain (> 1: plain is faster) and the form
``memory_readout`` / ``causal_retrieval`` picks (``plain_is_faster``), so the dispatch rule can be
checked on another CPU.
"""

import argparse

import torch
import torch.nn.functional as F
from common import best_time, header

from memory_mosaics.ops.retrieval import plain_is_faster, plain_retrieval

H, DH, N = 4, 64, 896


def fwd_bwd(read, q, k, v):
    g = torch.randn(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    return lambda: read(q, k, v).backward(g)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--T", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    header("memory reads, forward + backward, ms")
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        cases = [("P-mem", 1, n, N, False) for n in (1024, 4096)]
        cases += [("causal", 4, T - 1, T - 1, True) for T in args.T]
        for name, B, n_q, n_k, causal in cases:
            q, k, v = (torch.randn(B, H, n, DH, dtype=dtype, requires_grad=True) for n in (n_q, n_k, n_k))
            for dropout in (0.0, 0.05):
                sdpa = best_time(
                    fwd_bwd(
                        lambda q, k, v: F.scaled_dot_product_attention(
                            q, k, v, dropout_p=dropout, is_causal=causal, scale=1.0
                        ),
                        q,
                        k,
                        v,
                    ),
                    args.repeats,
                )
                plain = best_time(
                    fwd_bwd(lambda q, k, v: plain_retrieval(q, k, v, causal, dropout), q, k, v), args.repeats
                )
                picks = "plain" if plain_is_faster(q, causal, dropout) else "SDPA"
                print(
                    f"{precision} {name:6s} B {B} queries {n_q:5d} keys {n_k:5d} dropout {dropout:4.2f}  "
                    f"SDPA {sdpa * 1e3:8.1f} ms  plain {plain * 1e3:8.1f} ms  SDPA/plain {sdpa / plain:5.2f}  "
                    f"picks {picks}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
