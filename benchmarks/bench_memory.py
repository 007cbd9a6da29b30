"""Peak memory of a forward pass at T = 4096, batch 1: MosaicLM vs GPTLM (same size).

Each measurement runs in a fresh child process and reports the growth of the peak resident set
size (ru_maxrss) during one forward pass, above the peak reached after building the model and a
short warm-up; with ``--grad`` the forward keeps what backward needs (training). ``--saved``
counts instead, exactly, the bytes of the distinct tensors autograd keeps for backward (the
activations of a training forward, parameters excluded): deterministic, unlike the RSS.

``--mmap-threshold BYTES`` runs the children with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed: every
block above it is returned to the system when freed, so the RSS follows the live tensors; by default
glibc raises its threshold after each large free and keeps such blocks in the heap, where they count
in the RSS although no tensor lives there.

    python benchmarks/bench_memory.py [--T 4096] [--grad | --saved] [--mmap-threshold 65536]
"""

import argparse
import json
import os
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


def saved_bytes(kind: str, T: int) -> int:
    """Bytes of the distinct storages autograd saves during one training forward (no parameters)."""
    torch.manual_seed(0)
    model = (mosaic() if kind == "mosaic" else gpt(T)).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    idx = torch.randint(0, 8192, (1, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return sum(seen.values())


def measure(kind: str, T: int, grad: bool, mmap_threshold: int | None) -> float:
    cmd = [sys.executable, __file__, "--child", kind, "--T", str(T)] + (["--grad"] if grad else [])
    env = dict(os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold else {}))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mib"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--grad", action="store_true", help="forward with autograd (training) instead of inference")
    p.add_argument("--saved", action="store_true", help="exact bytes autograd keeps for backward instead of RSS")
    p.add_argument("--mmap-threshold", type=int, help="glibc MALLOC_MMAP_THRESHOLD_ for the measured processes")
    p.add_argument("--child", choices=["mosaic", "gpt"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.T, args.grad)
    if args.saved:
        header(f"activations kept for backward, T={args.T}, batch 1, n_layer 4, d 256, vocab 8192")
        mib = {kind: saved_bytes(kind, args.T) / 2**20 for kind in ("mosaic", "gpt")}
        for kind, value in mib.items():
            print(f"{kind:6s} saved {value:8.1f} MiB")
        print(f"mosaic / gpt saved activations: {mib['mosaic'] / mib['gpt']:.2f}")
        return
    mode = "training forward (grad)" if args.grad else "inference forward (no grad)"
    allocator = f", mmap threshold {args.mmap_threshold}" if args.mmap_threshold else ""
    header(f"peak memory, {mode}, T={args.T}, batch 1, n_layer 4, d 256, vocab 8192{allocator}")
    mib = {kind: measure(kind, args.T, args.grad, args.mmap_threshold) for kind in ("mosaic", "gpt")}
    for kind, value in mib.items():
        print(f"{kind:6s} peak growth {value:8.1f} MiB")
    print(f"mosaic / gpt peak memory: {mib['mosaic'] / mib['gpt']:.2f}")


if __name__ == "__main__":
    main()
