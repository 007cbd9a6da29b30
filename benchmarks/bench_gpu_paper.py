"""Paper-configuration training throughput and model FLOPs utilisation on a GPU (issues 15 and 11).

    python benchmarks/bench_gpu_paper.py [--depths 1 12] [--contexts 512] [--tokens 16384] [--steps 10]
                                         [--modes eager compile] [--dropout authors|off]
                                         [--leaky auto|chunked|scan|assoc|triton ...] [--models mosaic gpt]
                                         [--profile DIR] [--budget-s 150] [--isolate SECONDS]
                                         [--device cuda|cpu] [--out FILE.json]

For each context, depth, mode (eager, ``torch.compile``) and model (Mosaic, GPT-2) of the paper's
size (d 768, 12 heads, vocabulary 50304, the Mosaic with P-mem 2688) it times forward + backward +
AdamW steps under bf16 autocast on ``--tokens`` tokens per step (micro-batch = tokens / context; the
default is the paper preset's 32 sequences of 512) of random tokens, and prints tokens/s, peak
memory and MFU. ``--dropout authors``: the Mosaic with the authors' dropouts (residual 0.05, P-mem
retrieval 0.05), GPT-2 with 0.05; ``off``: none. ``--leaky``: the Mosaic's leaky-average form
(``ops.leaky_average.use_method``; ``auto``, the default, is the Triton kernel on CUDA where Triton
is installed, else the doubling scan; ``assoc``, torch's associative scan, one Triton scan kernel
under ``torch.compile``; ``triton``, our Triton kernel, ``ops.leaky_triton``). ``--models``: which
of the two to run (both by default).
Several ``--leaky`` forms: the Mosaic once per form (GPT-2 once).
``--isolate SECONDS`` runs each configuration in a process of its own, with empty inductor and Triton
cache folders, so that warm-up (compile) times compare whatever ran before, and stops it after
SECONDS, recording a timeout without losing the other configurations. ``--device cpu`` runs tiny
sizes of the same script where there is no GPU, to check it.
``--profile DIR`` profiles two more steps of each configuration with ``torch.profiler`` and writes the
kernels that took the most GPU time to ``DIR/<model>-<depth>-<mode>-T<context>.txt``. Model FLOPs
per token (nanoGPT's convention): 6 N + 12 L d T, N the
parameters that take part in matrix products (the tied embedding counted once, as the output
layer; GPT-2's position table excluded), the second term the T x T retrieval/attention products; the
P-mem's retrieval is in 6 N through its banks. MFU divides by the GPU's dense bf16 peak
(``--peak-tflops``, default 989 for an H100/H200 SXM). Timing: CUDA-synchronised wall time, median
of ``--steps`` steps after 3 warm-up steps. Results are appended to ``--out`` after every
configuration, so a run stopped by ``--budget-s`` keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from common import positive_float, positive_int

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM
from memory_mosaics.ops.leaky_average import METHODS, use_method

PAPER = dict(vocab_size=50304, n_head=12, n_embd=768)


def build(kind: str, depth: int, context: int, dropout: float) -> torch.nn.Module:
    if kind == "mosaic":
        return MosaicLM(
            MosaicConfig(**PAPER, n_layer=depth, dropout=dropout, attn_dropout=0.0, pmem_attn_dropout=dropout)
        )
    return GPTLM(GPTConfig(**PAPER, n_layer=depth, block_size=context, dropout=dropout))


def flops_per_token(model: torch.nn.Module, kind: str, depth: int, context: int) -> float:
    n = model.num_params()
    if kind == "gpt":
        n -= model.wpe.weight.numel()
    return 6 * n + 12 * depth * PAPER["n_embd"] * context


def profile(step, path: str, device: str, rows: int = 30) -> None:
    """Two profiled steps; the ``rows`` kernels with the most GPU time, as a table, to ``path``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profiler(activities=activities) as prof:
        for _ in range(2):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    try:
        table = averages.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=90)
    except (AttributeError, KeyError):  # torch before the "device" names
        table = averages.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=90)
    with open(path, "w") as f:
        f.write(table)


def measure(
    kind: str,
    depth: int,
    mode: str,
    context: int,
    micro_batch: int,
    dropout: float,
    steps: int,
    peak_tflops: float,
    profile_path: str | None = None,
    device: str = "cuda",
) -> dict:
    torch.manual_seed(0)
    torch._dynamo.reset()  # compile afresh: an earlier configuration's shapes must not make this one dynamic
    model = build(kind, depth, context, dropout).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device == "cuda")
    fwd = torch.compile(model) if mode == "compile" else model
    idx = torch.randint(0, PAPER["vocab_size"], (micro_batch, context + 1), device=device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast(device, dtype=torch.bfloat16):
            _, loss = fwd(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()  # .item() synchronises
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if profile_path:
        os.makedirs(os.path.dirname(profile_path) or ".", exist_ok=True)
        try:
            profile(step, profile_path, device)
        except Exception as err:  # a failed profile must not lose the measurement
            print(f"profile failed: {err!r}"[:300], flush=True)
    tokens_per_s = micro_batch * context / dt
    flops = flops_per_token(model, kind, depth, context)
    return {
        "model": kind,
        "depth": depth,
        "mode": mode,
        "micro_batch": micro_batch,
        "context": context,
        "dropout": dropout,
        "params": model.num_params(),
        "step_ms": dt * 1e3,
        "tokens_per_s": tokens_per_s,
        "model_tflops": flops * tokens_per_s / 1e12,
        "mfu": flops * tokens_per_s / (peak_tflops * 1e12),
        "peak_memory_gib": peak,
        "warmup_s": warmup_s,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
    }


def isolated(args: argparse.Namespace, context: int, mode: str, depth: int, kind: str, leaky: str) -> list[dict]:
    """One configuration in a process of its own, with empty inductor and Triton cache folders,
    stopped (with the processes it started) after ``args.isolate`` seconds. Its result rows, or one
    row saying why there is none."""
    where = {"model": kind, "depth": depth, "mode": mode, "context": context, "leaky": leaky}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-paper-") as folder:
        out = os.path.join(folder, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--contexts", str(context), "--modes", mode]
        command += ["--depths", str(depth), "--models", kind, "--leaky", leaky, "--tokens", str(args.tokens)]
        command += ["--dropout", args.dropout, "--steps", str(args.steps), "--peak-tflops", str(args.peak_tflops)]
        command += ["--device", args.device, "--out", out] + (["--profile", args.profile] if args.profile else [])
        caches = {
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "inductor"),
            "TRITON_CACHE_DIR": os.path.join(folder, "triton"),
        }
        child = subprocess.Popen(command, env=os.environ | caches, start_new_session=True)
        try:
            code = child.wait(timeout=args.isolate)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child and its compile workers
            child.wait()
            print(f"killed after {args.isolate:.0f} s: {where}", flush=True)
            return [where | {"error": f"killed after {args.isolate:.0f} s (isolated, empty caches)"}]
        if not os.path.exists(out):
            return [where | {"error": f"no result (exit code {code})"}]
        with open(out) as f:
            return [row | {"isolated": True} for row in json.load(f)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depths", type=positive_int, nargs="+", default=[1, 12])
    p.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    p.add_argument("--contexts", type=positive_int, nargs="+", default=[512])
    p.add_argument("--tokens", type=positive_int, default=16384, help="tokens per step: micro-batch = tokens / context")
    p.add_argument("--dropout", choices=["authors", "off"], default="authors")
    p.add_argument(
        "--leaky", nargs="+", choices=["auto", *METHODS], default=["auto"], help="the Mosaic's leaky-average form(s)"
    )
    p.add_argument("--models", nargs="+", choices=["mosaic", "gpt"], default=["mosaic", "gpt"])
    p.add_argument("--profile", metavar="DIR", help="profile each configuration; kernel tables to DIR")
    p.add_argument("--steps", type=positive_int, default=10)
    p.add_argument("--peak-tflops", type=positive_float, default=989.0)
    p.add_argument(
        "--budget-s", type=positive_float, default=150.0, help="start no configuration after this many seconds"
    )
    p.add_argument(
        "--isolate",
        type=positive_float,
        metavar="SECONDS",
        help="each configuration in its own process, empty caches, time limit",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: to check the script without a GPU")
    p.add_argument("--out", default="gpu_paper.json")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu_paper.py needs a CUDA GPU (or --device cpu, to check the script)")
    torch.backends.cuda.matmul.allow_tf32 = True
    dropout = 0.05 if args.dropout == "authors" else 0.0
    start, results = time.time(), []
    configurations = [
        (c, m, d, k, leaky)
        for c in args.contexts
        for m in args.modes
        for d in args.depths
        for k in args.models
        for leaky in (args.leaky if k == "mosaic" else ["auto"])
    ]
    for context, mode, depth, kind, leaky in configurations:
        name = f"T {context:5d} {mode:8s} depth {depth:2d} {kind:6s}" + (f" {leaky}" if kind == "mosaic" else "")
        if time.time() - start > args.budget_s:
            print(f"budget reached: skipping {name}", flush=True)
            continue
        if args.isolate is not None:
            results += isolated(args, context, mode, depth, kind, leaky)
        else:
            micro_batch = max(1, args.tokens // context)
            tag = f"-{leaky}" if kind == "mosaic" else ""
            path = os.path.join(args.profile, f"{kind}-{depth}-{mode}-T{context}{tag}.txt") if args.profile else None
            try:
                with use_method(None if leaky == "auto" else leaky):
                    r = measure(
                        kind,
                        depth,
                        mode,
                        context,
                        micro_batch,
                        dropout,
                        args.steps,
                        args.peak_tflops,
                        path,
                        args.device,
                    )
            except Exception as err:  # keep measuring the other configurations; record why this one failed
                error = {"model": kind, "depth": depth, "mode": mode, "context": context, "leaky": leaky}
                results.append(error | {"error": repr(err)[:500]})
                print(f"{name} failed: {err!r}"[:300], flush=True)
                continue
            results.append(r | {"leaky": leaky})
            peak = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f} GiB"
            print(
                f"{name} {r['step_ms']:8.1f} ms/step {r['tokens_per_s']:10.0f} tok/s "
                f"{r['model_tflops']:6.1f} TFLOP/s  MFU {r['mfu']:.3f}  peak {peak}  "
                f"warm-up (compilation) {r['warmup_s']:.0f} s",
                flush=True,
            )
            if args.device == "cuda":
                torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
