"""Peak memory of a forward pass at T = 4096, batch 1: MosaicLM vs GPTLM (same size).

Each measurement runs in a fresh child process and reports the growth of the peak resident set
size (ru_maxrss) during one forward pass, above the peak reached after building the model and a
short warm-up; with ``--grad`` the forward keeps what backward needs (training).

    python benchmarks/bench_memory.py [--T 4096] [--grad]
"""

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import gpt, header, mosaic


def child(kind: str, T: int, grad: bool) -> None:
    torch.manual_seed(0)
    model = (mosaic() if kind == "mosaic" else gpt(T)).eval()
    with torch.set_grad_enabled(grad):
        model(torch.randint(0, 8192, (1, 64)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        logits = model(torch.randint(0, 8192, (1, T)))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del logits
    print(json.dumps({"peak_growth_mib": (after - before) / 1024}))


def measure(kind: str, T: int, grad: bool) -> float:
    cmd = [sys.executable, __file__, "--child", kind, "--T", str(T)] + (["--grad"] if grad else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mib"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--grad", action="store_true", help="forward with autograd (training) instead of inference")
    p.add_argument("--child", choices=["mosaic", "gpt"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.T, args.grad)
    mode = "training forward (grad)" if args.grad else "inference forward (no grad)"
    header(f"peak memory, {mode}, T={args.T}, batch 1, n_layer 4, d 256, vocab 8192")
    mib = {kind: measure(kind, args.T, args.grad) for kind in ("mosaic", "gpt")}
    for kind, value in mib.items():
        print(f"{kind:6s} peak growth {value:8.1f} MiB")
    print(f"mosaic / gpt peak memory: {mib['mosaic'] / mib['gpt']:.2f}")


if __name__ == "__main__":
    main()
