"""One block's parts, forward + backward: the Mosaic's memories against GPT-2's attention and MLP.

    python benchmarks/bench_block_parts.py [--T 256] [--batch 4] [--repeats 10] [--rounds 3]

Each part of block 0 (contextual memory, persistent memory; attention, MLP) runs alone on a random
input (batch, T, 256) with a fixed random gradient, fp32, with freed memory kept
(``training.allocator``: no page faults in the timings). Each round prints every part's min time;
the rounds show the noise. Where the whole step's difference goes: ``docs/benchmarks.md``, round 4.
"""

import argparse

import torch
from common import best_time, gpt, header, mosaic

from memory_mosaics.training.allocator import keep_freed_memory


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    keep_freed_memory()
    header(f"one block's parts, forward + backward, x ({args.batch}, {args.T}, 256), fp32, ms")
    torch.manual_seed(0)
    block, gpt_block = mosaic().train().blocks[0], gpt(args.T).train().blocks[0]
    parts = {"C-mem": block.cmem, "P-mem": block.pmem, "attention": gpt_block.attn, "MLP": gpt_block.mlp}
    x = torch.randn(args.batch, args.T, 256, requires_grad=True)
    grad = torch.randn(args.batch, args.T, 256)
    for r in range(args.rounds):
        times = {name: best_time(lambda m=m: m(x).backward(grad), args.repeats) for name, m in parts.items()}
        print(f"round {r}: " + "  ".join(f"{name} {t * 1e3:7.2f}" for name, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
