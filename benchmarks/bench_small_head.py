"""Small-head retrieval kernel vs scaled_dot_product_attention (the baseline), forward and backward.

    python benchmarks/bench_small_head.py [--repeats 5] [--threads 1]

Shapes of the three-moons training step (batch 64, T 800): 3 heads of size 2 and 1 head of size 6,
then a head size of 8 (the kernel's limit), and a whole three-moons training step with each.
"""

import argparse

import torch
import torch.nn.functional as F
from common import best_time, header

from memory_mosaics.data.moons import WINDOW, sample_batch, spec_systems
from memory_mosaics.models.moons import moons_memory
from memory_mosaics.ops import small_head


def sdpa(q, k, v):
    """The library's path without the kernel: SDPA with the shift trick (min_lag = 1)."""
    out = F.scaled_dot_product_attention(q[:, :, 1:], k[:, :, :-1], v[:, :, :-1], is_causal=True, scale=1.0)
    return F.pad(out, (0, 0, 1, 0))


def fwd_bwd(fn, q, k, v):
    def run():
        fn(q, k, v).sum().backward()

    def fwd():
        with torch.no_grad():
            fn(q, k, v)

    return fwd, run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not small_head.available():
        raise SystemExit("the small-head kernel is not built (no C compiler?)")
    header("causal retrieval at small head sizes, fp32, B=64 T=800")
    print(f"{'H x D':>7} {'pass':>9} {'SDPA ms':>9} {'kernel ms':>10} {'speed-up':>9}")
    for H, D in ((3, 2), (1, 6), (4, 8)):
        q, k, v = (torch.randn(64, H, 800, D, requires_grad=True) for _ in range(3))
        for name, idx in (("forward", 0), ("fwd+bwd", 1)):
            base = best_time(fwd_bwd(sdpa, q, k, v)[idx], args.repeats)
            fast = best_time(fwd_bwd(small_head.small_head_retrieval, q, k, v)[idx], args.repeats)
            print(f"{H:>3} x {D:<3} {name:>9} {base * 1e3:9.1f} {fast * 1e3:10.1f} {base / fast:8.1f}x")

    header("three-moons training step (forward + backward), batch 64 x 800")
    x, y = sample_batch(spec_systems()[0], 64, WINDOW, torch.Generator().manual_seed(0))
    for heads in (1, 3):
        memory = moons_memory(heads)

        def step():
            (memory(x) - y).square().mean().backward()

        fast = best_time(step, args.repeats)
        supports = small_head.supports
        small_head.supports = lambda *a: False  # force the SDPA path
        try:
            base = best_time(step, args.repeats)
        finally:
            small_head.supports = supports
        print(
            f"{heads} head(s): SDPA {base * 1e3:7.1f} ms   kernel {fast * 1e3:7.1f} ms   speed-up {base / fast:5.1f}x"
        )


if __name__ == "__main__":
    main()
