"""Paper-configuration training throughput and model FLOPs utilisation on a GPU (issue 15, item 7).

    python benchmarks/bench_gpu_paper.py [--depths 1 12] [--micro-batch 32] [--steps 10]
                                         [--modes eager compile] [--budget-s 150] [--out FILE.json]

For each depth, mode (eager, ``torch.compile``) and model (Mosaic, GPT-2) of the paper's size (d 768,
12 heads, context 512, vocabulary 50304, the Mosaic with P-mem 2688 and the authors' dropouts, GPT-2
with dropout 0.05) it times forward + backward + AdamW steps under bf16 autocast on a micro-batch of
``--micro-batch`` sequences (the paper preset's 32 per forward pass) of random tokens, and prints
tokens/s, peak memory and MFU. Model FLOPs per token (nanoGPT's convention): 6 N + 12 L d T, N the
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
import statistics
import time

import torch

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM

PAPER = dict(vocab_size=50304, n_head=12, n_embd=768)
CONTEXT = 512


def build(kind: str, depth: int) -> torch.nn.Module:
    if kind == "mosaic":
        return MosaicLM(MosaicConfig(**PAPER, n_layer=depth, dropout=0.05, attn_dropout=0.0, pmem_attn_dropout=0.05))
    return GPTLM(GPTConfig(**PAPER, n_layer=depth, block_size=CONTEXT, dropout=0.05))


def flops_per_token(model: torch.nn.Module, kind: str, depth: int) -> float:
    n = model.num_params()
    if kind == "gpt":
        n -= model.wpe.weight.numel()
    return 6 * n + 12 * depth * PAPER["n_embd"] * CONTEXT


def measure(kind: str, depth: int, mode: str, micro_batch: int, steps: int, peak_tflops: float) -> dict:
    torch.manual_seed(0)
    model = build(kind, depth).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    idx = torch.randint(0, PAPER["vocab_size"], (micro_batch, CONTEXT + 1), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = fwd(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()  # .item() synchronises
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    tokens_per_s = micro_batch * CONTEXT / dt
    flops = flops_per_token(model, kind, depth)
    return {
        "model": kind,
        "depth": depth,
        "mode": mode,
        "micro_batch": micro_batch,
        "context": CONTEXT,
        "params": model.num_params(),
        "step_ms": dt * 1e3,
        "tokens_per_s": tokens_per_s,
        "model_tflops": flops * tokens_per_s / 1e12,
        "mfu": flops * tokens_per_s / (peak_tflops * 1e12),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "warmup_s": warmup_s,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depths", type=int, nargs="+", default=[1, 12])
    p.add_argument("--modes", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--budget-s", type=float, default=150.0, help="start no configuration after this many seconds")
    p.add_argument("--out", default="gpu_paper.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_paper.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    start, results = time.time(), []
    for mode in args.modes:
        for depth in args.depths:
            for kind in ("mosaic", "gpt"):
                if time.time() - start > args.budget_s:
                    print(f"budget reached: skipping {kind} depth {depth} {mode}", flush=True)
                    continue
                try:
                    r = measure(kind, depth, mode, args.micro_batch, args.steps, args.peak_tflops)
                except Exception as err:  # keep measuring the other configurations; record why this one failed
                    results.append({"model": kind, "depth": depth, "mode": mode, "error": repr(err)[:500]})
                    print(f"{mode:8s} depth {depth:2d} {kind:6s} failed: {err!r}"[:300], flush=True)
                    continue
                results.append(r)
                print(
                    f"{mode:8s} depth {depth:2d} {kind:6s} {r['step_ms']:8.1f} ms/step {r['tokens_per_s']:10.0f} tok/s "
                    f"{r['model_tflops']:6.1f} TFLOP/s  MFU {r['mfu']:.3f}  peak {r['peak_memory_gib']:.1f} GiB",
                    flush=True,
                )
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
