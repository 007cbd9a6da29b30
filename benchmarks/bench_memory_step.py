"""One decoding step of a memory on the CPU: the torch operations against the kernels of
ops/memory_step.py, and the read alone (SDPA against the kernels' step without key or pair).

    python benchmarks/bench_memory_step.py [--pairs 1024] [--batch 1 8] [--repeats 30]

Layers of the benchmark size (d 256, 4 heads of 64), fp32. A step of a contextual memory holding
``pairs`` pairs, and of a persistent memory (its bank of 3.5 d pairs per head): min time of one step
over ``repeats``, repeated on the same data (warm caches: a model's step runs between other layers'
work, see bench_decode.py for the whole step).
"""

import argparse
from unittest import mock

import torch
from common import best_time, header, mosaic, positive_int

from memory_mosaics.ops import memory_step


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=positive_int, default=1024)
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=positive_int, default=30)
    args = p.parse_args()
    if not memory_step.available():
        raise SystemExit("the memory-step kernel is not built (no C compiler?)")
    header(f"one decoding step of a memory, {args.pairs} stored pairs, fp32, min of {args.repeats}, us")
    torch.manual_seed(0)
    block = mosaic().eval().blocks[0]
    for B in args.batch:
        x = torch.randn(B, args.pairs + 1, 256)

        def steps(name: str):
            """A step of a memory just prefilled with ``pairs`` pairs (each timing starts from there)."""
            if name == "contextual":
                state = block.cmem.prefill(x[:, :-1])[1]
                return lambda: block.cmem.step(x[:, -1:], state)
            state = block.pmem.prefill(x[:, :-1])[1]
            return lambda: block.pmem.step(x[:, -1:], state)

        for name in ("contextual", "persistent"):
            fast = best_time(steps(name), args.repeats)
            with mock.patch.object(memory_step, "available", lambda: False):
                plain = best_time(steps(name), args.repeats)
            times = f"torch {plain * 1e6:7.0f}  kernels {fast * 1e6:7.0f}  ({plain / fast:.2f}x)"
            print(f"batch {B}: {name:10s} step  {times}")
        q = torch.randn(B, 4, 1, 64)
        keys, values = torch.randn(2, B, 4, args.pairs, 64)
        kw = dict(phi=q, state=None, decay=torch.zeros(4), beta=torch.ones(4), keys=keys, values=values)
        kernel = best_time(lambda: memory_step.memory_step(start=0, stop=args.pairs, **kw), args.repeats)
        sdpa = best_time(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=1.0), args.repeats
        )
        threads = torch.get_num_threads()
        print(f"batch {B}: read alone ({threads} threads)  SDPA {sdpa * 1e6:7.0f}  kernel step {kernel * 1e6:7.0f}")


if __name__ == "__main__":
    main()
