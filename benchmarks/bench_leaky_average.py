"""Fast (chunked) leaky average vs the literal recurrence: forward + backward; and ``leaky_average``,
the chunked form with its own backward (a leaky average backwards in time), as the layers call it.

python benchmarks/bench_leaky_average.py [--T 1024] [--repeats 5]
"""

import argparse

import torch
from common import best_time, header

from memory_mosaics.ops.leaky_average import leaky_average, leaky_average_chunked, leaky_average_reference


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    header("leaky average, forward + backward, B=4 H=4 Dh=64 fp32")
    ld = torch.tensor([-0.5, -1.0, -2.0, -5.0]).view(1, 4, 1).requires_grad_()
    for T in args.T:
        x = torch.randn(4, 4, T, 64, requires_grad=True)
        timings = {
            name: best_time(lambda f=f: f(x, ld).sum().backward(), args.repeats)
            for name, f in (
                ("reference", leaky_average_reference),
                ("chunked", leaky_average_chunked),
                ("own backward", leaky_average),
            )
        }
        print(
            f"T={T:5d}  reference {timings['reference'] * 1e3:8.2f} ms   chunked {timings['chunked'] * 1e3:7.2f} ms"
            f"   speed-up {timings['reference'] / timings['chunked']:6.1f}x   own backward "
            f"{timings['own backward'] * 1e3:7.2f} ms ({timings['chunked'] / timings['own backward']:.2f}x chunked)"
        )


if __name__ == "__main__":
    main()
