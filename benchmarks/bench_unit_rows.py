"""The Mosaic's row-wise work, forward + backward: torch operations against the C kernels.

    python benchmarks/bench_unit_rows.py [--T 256 1024 4096] [--repeats 10] [--precision fp32 bf16]

Rows (B 4, H 4, Dh 64, the layouts the layers pass):

* ``keys``: the contextual memory's k = kbar / ||kbar|| and q = beta k (``unit_keys_reference``,
  autograd through torch operations) against ``UnitKeys`` (one C pass forward, one backward);
* ``queries``: the persistent memory's q alone, the same two ways;
* ``peek``: the value peek of a projection split into heads, ``PeekValue`` with its torch
  backward against its kernel (``csrc/unit_rows.c``);
* ``leaky``: the native leaky average of a projection split into heads, copied to a contiguous
  tensor first (what the kernel needed before) against read in place (its gradient written in the
  projection's layout, the decay's dot products fused into the backward scan).

Each row prints both times and their ratio (> 1: the kernel is faster), measured in the same run.
"""

import argparse
import contextlib

import torch
from common import best_time, header

from memory_mosaics.ops import leaky_kernel, unit_rows
from memory_mosaics.ops.leaky_average import LeakyAverage
from memory_mosaics.ops.peek import PeekValue

B, H, DH = 4, 4, 64


@contextlib.contextmanager
def torch_operations():
    """``PeekValue`` takes its torch path while inside (the kernel reported unavailable)."""
    supports = unit_rows.supports
    unit_rows.supports = lambda x: False
    try:
        yield
    finally:
        unit_rows.supports = supports


def fwd_bwd(fn, *inputs):
    """A closure running fn(*inputs) and a backward from a fixed random gradient on every output."""
    outs = [o for o in fn(*inputs) if o is not None]
    grads = [torch.randn_like(o) for o in outs]

    def run():
        torch.autograd.backward([o for o in fn(*inputs) if o is not None], grads)

    return run


def cases(dtype: torch.dtype, T: int) -> dict[str, tuple]:
    """name -> (baseline label, baseline closure, kernel closure)."""
    kbar = torch.randn(B, H, T, DH, dtype=dtype, requires_grad=True)
    beta = torch.rand(1, H, 1, 1, dtype=dtype, requires_grad=True)
    v_tilde = torch.randn(B, T, H, DH, dtype=dtype).transpose(1, 2).requires_grad_()
    gamma, alpha = torch.rand(H, requires_grad=True), torch.rand(H, requires_grad=True)
    log_decay = torch.linspace(-0.5, -5.0, H).view(1, H, 1).requires_grad_()
    out = {
        "keys": (
            "torch",
            fwd_bwd(lambda x, b: unit_rows.unit_keys_reference(x, b, True), kbar, beta),
            fwd_bwd(lambda x, b: unit_rows.UnitKeys.apply(x, b, True), kbar, beta),
        ),
        "queries": (
            "torch",
            fwd_bwd(lambda x, b: unit_rows.unit_keys_reference(x, b, False), kbar, beta),
            fwd_bwd(lambda x, b: unit_rows.UnitKeys.apply(x, b, False), kbar, beta),
        ),
    }
    peek = fwd_bwd(lambda v, g, a: (PeekValue.apply(v, g, a),), v_tilde, gamma, alpha)

    def peek_torch():
        with torch_operations():
            peek()

    out["peek"] = ("torch", peek_torch, peek)
    if leaky_kernel.available():
        out["leaky"] = (
            "copied",
            fwd_bwd(lambda x, ld: (LeakyAverage.apply(x.contiguous(), ld, None, "native"),), v_tilde, log_decay),
            fwd_bwd(lambda x, ld: (LeakyAverage.apply(x, ld, None, "native"),), v_tilde, log_decay),
        )
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    args = p.parse_args()
    if not unit_rows.available():
        raise SystemExit("the unit-rows kernel is not built here (no C compiler): nothing to compare")
    header(f"row-wise work, forward + backward, B {B}, H {H}, Dh {DH}, ms")
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for T in args.T:
            for name, (label, base_run, kernel_run) in cases(dtype, T).items():
                t_base, t_kernel = (best_time(run, args.repeats) for run in (base_run, kernel_run))
                print(
                    f"{precision} T={T:5d} {name:8s} {label} {t_base * 1e3:7.2f}  kernel {t_kernel * 1e3:7.2f}"
                    f"  {label} / kernel {t_base / t_kernel:5.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
