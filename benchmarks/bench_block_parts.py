"""One block's parts, forward + backward: the Mosaic's memories against GPT-2's attention and MLP.

    python benchmarks/bench_block_parts.py [--T 256] [--batch 4] [--repeats 10] [--rounds 3] [--dropout 0.05]
                                          [--precision fp32] [--products]

Each part of block 0 (contextual memory, persistent memory; attention, MLP) runs alone on a random
input (batch, T, 256) with a fixed random gradient, fp32 or under bf16 autocast (``--precision``;
``--dropout``: each training recipe's dropouts, as in ``bench_train_step.py``), with freed memory kept
(``training.allocator``: no page faults in the timings). Each round prints every part's min time;
the rounds show the noise. Where the whole step's difference goes: ``docs/benchmarks.md``, round 4.

``--products`` also times, alone, the matrix products each part's forward and backward must do
(the persistent memory's read counted without the recomputation of a flash backward), at the rate
BLAS runs their shapes here. Their sum is a floor under the part's time that no implementation
built on these products goes below (the row-wise work, softmax included, comes on top).
"""

import argparse
import contextlib

import torch
from common import best_time, gpt, header, mosaic, positive_int, probability

from memory_mosaics.training.allocator import keep_freed_memory


def products(part: str, M: int, D: int, H: int, N: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """The matrix products of one part's forward and backward for M = batch x T tokens, width D, as
    (name, a's shape, b's shape) of ``a @ b`` (batched over heads where a has 3 dims). A projection
    y = x W^T (M x D_in -> M x D_out) costs three: y, dL/dx = dL/dy W, dL/dW = dL/dy^T x."""

    def linear(name, d_in, d_out):
        return [(f"{name} y", (M, d_in), (d_in, d_out)), (f"{name} dx", (M, d_out), (d_out, d_in)),
                (f"{name} dW", (d_out, M), (M, d_in))]  # fmt: skip

    Dh = D // H
    if part == "P-mem":  # W_phi, the read against the N-pair bank (kept weights: no recomputation), W_o
        read = [("read scores", (H, M, Dh), (H, Dh, N)), ("read y", (H, M, N), (H, N, Dh)),
                ("read dP", (H, M, Dh), (H, Dh, N)), ("read du", (H, N, M), (H, M, Dh)),
                ("read dq", (H, M, N), (H, N, Dh)), ("read dkappa", (H, N, M), (H, M, Dh))]  # fmt: skip
        return linear("W_phi", D, D) + read + linear("W_o", D, D)
    if part == "MLP":
        return linear("c_fc", D, 4 * D) + linear("c_proj", 4 * D, D)
    if part == "C-mem":  # the projections only: its causal read is attention's
        return linear("W_phi", D, D) + linear("W_psi", D, D) + linear("W_o", D, D)
    if part == "attention":
        return linear("c_attn", D, 3 * D) + linear("c_proj", D, D)
    raise ValueError(part)


def product_floor(part: str, M: int, D: int, H: int, N: int, repeats: int, dtype: torch.dtype) -> None:
    """Print each product's time and GFLOP/s in ``dtype``, and their sum."""
    total_ms = total_flop = 0.0
    for name, a_shape, b_shape in products(part, M, D, H, N):
        a, b = torch.randn(a_shape, dtype=dtype), torch.randn(b_shape, dtype=dtype)
        ms = best_time(lambda a=a, b=b: a @ b, repeats) * 1e3
        flop = 2 * a.numel() * b_shape[-1]
        total_ms, total_flop = total_ms + ms, total_flop + flop
        shapes = f"{str(a_shape):17s} @ {str(b_shape):17s}"
        print(f"  {part:9s} {name:12s} {shapes} {ms:7.2f} ms {flop / ms / 1e6:6.1f} GFLOP/s")
    print(f"  {part:9s} products' floor {total_ms:7.2f} ms for {total_flop / 1e9:.2f} GFLOP", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=positive_int, default=256)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--repeats", type=positive_int, default=10)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--dropout", type=probability, default=0.0, help="each recipe's dropouts, as in bench_train_step.py")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: the parts under autocast")
    p.add_argument("--products", action="store_true", help="also time each part's matrix products alone")
    args = p.parse_args()
    keep_freed_memory()
    size = f"x ({args.batch}, {args.T}, 256), dropout {args.dropout}, {args.precision}"
    header(f"one block's parts, forward + backward, {size}, ms")
    torch.manual_seed(0)
    block = mosaic(dropout=args.dropout, pmem_attn_dropout=args.dropout).train().blocks[0]
    gpt_block = gpt(args.T, dropout=args.dropout).train().blocks[0]
    parts = {"C-mem": block.cmem, "P-mem": block.pmem, "attention": gpt_block.attn, "MLP": gpt_block.mlp}
    x = torch.randn(args.batch, args.T, 256, requires_grad=True)
    grad = torch.randn(args.batch, args.T, 256)
    bf16 = args.precision == "bf16"

    def step(module):
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            y = module(x)
        y.float().backward(grad)

    for r in range(args.rounds):
        times = {name: best_time(lambda m=m: step(m), args.repeats) for name, m in parts.items()}
        print(f"round {r}: " + "  ".join(f"{name} {t * 1e3:7.2f}" for name, t in times.items()), flush=True)
    if args.products:
        H, N = block.pmem.kappa.shape[1:3]
        for name in parts:
            product_floor(name, args.batch * args.T, 256, H, N, args.repeats, torch.bfloat16 if bf16 else torch.float32)


if __name__ == "__main__":
    main()
