"""The leaky average, forward + backward: the literal recurrence against the fast forms.

python benchmarks/bench_leaky_average.py [--T 256 1024 4096] [--repeats 5] [--precision fp32 bf16]

Rows: ``reference`` (the recurrence in torch, autograd through it), ``chunked`` (autograd through
the chunked form), and ``LeakyAverage`` (the op the layers run: its own backward, a leaky average
backwards in time) with each fast form inside: chunked, doubling scan, and the compiled C kernel
(native, where it is built). Speed-ups are against the reference, measured in the same run.
"""

import argparse

import torch
from common import best_time, header

from memory_mosaics.ops import leaky_kernel
from memory_mosaics.ops.leaky_average import LeakyAverage, leaky_average_chunked, leaky_average_reference


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    args = p.parse_args()
    header("leaky average, forward + backward, B=4 H=4 Dh=64, ms")
    ld = torch.tensor([-0.5, -1.0, -2.0, -5.0]).view(1, 4, 1).requires_grad_()
    methods = ("chunked", "scan") + (("native",) if leaky_kernel.available() else ())
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for T in args.T:
            x = torch.randn(4, 4, T, 64, dtype=dtype, requires_grad=True)
            forms = {"reference": leaky_average_reference, "chunked": leaky_average_chunked}
            forms |= {f"op {m}": lambda x, ld, m=m: LeakyAverage.apply(x, ld, None, m) for m in methods}
            times = {
                name: best_time(lambda f=f: f(x, ld).float().sum().backward(), args.repeats)
                for name, f in forms.items()
            }
            ref = times["reference"]
            print(
                f"{precision} T={T:5d}  "
                + "   ".join(f"{name} {t * 1e3:7.2f} ({ref / t:5.1f}x)" for name, t in times.items()),
                flush=True,
            )


if __name__ == "__main__":
    main()
