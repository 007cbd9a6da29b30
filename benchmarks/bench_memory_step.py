"""One decoding step of a memory on the CPU: the torch operations against the kernels of
ops/memory_step.py, and the read alone (SDPA against the kernels' step without key or pair).

    python benchmarks/bench_memory_step.py [--pairs 1024] [--batch 1 8] [--repeats 30]

Layers of the benchmark size (d 256, 4 heads of 64), fp32. A step of a contextual memory holding
``pairs`` pairs, and of a persistent memory (its bank of 3.5 d pairs per head): min time of one step
over ``repeats``, repeated on the same data (warm caches: a model's step runs between other layers'
work, see bench_decode.py for the whole step).
"""

import argparse
import time
from unittest import mock

import torch
from common import header, mosaic

from memory_mosaics.ops import memory_step


def min_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=1024)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    if not memory_step.available():
        raise SystemExit("the memory-step kernel is not built (no C compiler?)")
    header(f"one decoding step of a memory, {args.pairs} stored pairs, fp32, min of {args.repeats}, us")
    torch.manual_seed(0)
    block = mosaic().eval().blocks[0]
    for B in args.batch:
        x = torch.randn(B, args.pairs + 1, 256)
        _, c_state = block.cmem.prefill(x[:, :-1])
        p_state = block.pmem.prefill(x[:, :-1])[1]
        steps = {
            "contextual": lambda: block.cmem.step(x[:, -1:], c_state),
            "persistent": lambda: block.pmem.step(x[:, -1:], p_state),
        }
        for name, step in steps.items():
            fast = min_time(step, args.repeats)
            with mock.patch.object(memory_step, "available", lambda: False):
                plain = min_time(step, args.repeats)
            times = f"torch {plain * 1e6:7.0f}  kernels {fast * 1e6:7.0f}  ({plain / fast:.2f}x)"
            print(f"batch {B}: {name:10s} step  {times}")
        q = torch.randn(B, 4, 1, 64)
        keys, values = torch.randn(2, B, 4, args.pairs, 64)
        kw = dict(phi=q, state=None, decay=torch.zeros(4), beta=torch.ones(4), keys=keys, values=values)
        kernel = min_time(lambda: memory_step.memory_step(start=0, stop=args.pairs, **kw), args.repeats)
        sdpa = min_time(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=1.0), args.repeats
        )
        threads = torch.get_num_threads()
        print(f"batch {B}: read alone ({threads} threads)  SDPA {sdpa * 1e6:7.0f}  kernel step {kernel * 1e6:7.0f}")


if __name__ == "__main__":
    main()
