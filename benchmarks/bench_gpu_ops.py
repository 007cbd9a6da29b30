"""Where a Mosaic block's time goes on a GPU, part by part, against the GPT-2 block (issue 11, item 6).

    python benchmarks/bench_gpu_ops.py [--contexts 512 2048] [--tokens 16384] [--out gpu_ops.json]
                                       [--device cuda] [--n-embd 768 --n-head 12]

At the paper's block size (d 768, 12 heads of 64, P-mem 2688 pairs per head) and ``--tokens`` tokens
per batch (micro-batch = tokens / context), it times forward + backward under bf16 autocast of:

* whole blocks, eager and ``torch.compile``: ``MosaicBlock`` against ``GPTBlock``, with the authors'
  dropouts (Mosaic: residual 0.05, P-mem retrieval 0.05; GPT-2: 0.05) and with none;
* the branches that replace each other: the contextual memory against GPT-2's attention, and the
  persistent memory against GPT-2's MLP (same weight count);
* the P-mem's readout alone (``memory_readout``: SDPA over the bank expanded to the batch) against
  the same readout with the batch folded into the query axis (one SDPA over B T queries, no
  expanded bank and no (B, H, N, Dh) gradient to sum), with and without retrieval dropout;
* the leaky average (forward + backward of :class:`LeakyAverage`) in each of its GPU forms (chunked,
  doubling scan, torch's associative scan, the Triton kernel; the native kernel on the CPU), eager
  and compiled, on (B, H, T, Dh) in bfloat16 (float32 on the CPU), the activations' dtype in the
  model.

``--parts blocks`` times the whole blocks only, ``--parts leaky`` the leaky average only;
``--profile`` prints the kernels of each compiled
block (``torch.profiler``, two runs).

Timing: CUDA events, median of ``--repeats`` runs after 3 warm-up runs. Every row is also written
to ``--out`` (JSON). ``--device cpu`` with small sizes checks the script without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from memory_mosaics import GPTConfig, MosaicConfig
from memory_mosaics.models.gpt import GPTBlock
from memory_mosaics.models.mosaic import MosaicBlock
from memory_mosaics.ops.leaky_average import METHODS, LeakyAverage
from memory_mosaics.ops.retrieval import memory_readout


def timer(device: str, repeats: int):
    """``time(fn)`` -> median milliseconds of fn() (which runs forward and backward)."""

    def time_ms(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)

    return time_ms


def fwd_bwd(module, x: torch.Tensor, device: str):
    """A closure running module(x) and backward through it under bf16 autocast."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    grad = torch.randn_like(x, dtype=dtype)

    def run():
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            y = module(x)
        y.backward(grad.to(y.dtype))

    return run


def kernel_table(run, rows: int = 25) -> str:
    """The ``rows`` operators with the most GPU time over two profiled runs of ``run``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            run()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=80)


def folded_readout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """memory_readout with the batch folded into the query axis: (B, H, T, D) -> (1, H, B T, D) -> back."""
    B, H, T, D = q.shape
    y = F.scaled_dot_product_attention(q.transpose(0, 1).reshape(1, H, B * T, D), k, v, dropout_p=dropout_p, scale=1.0)
    return y.view(H, B, T, -1).transpose(0, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--tokens", type=int, default=16384, help="tokens per batch: micro-batch = tokens / context")
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="eager rows only (no torch.compile)")
    p.add_argument(
        "--parts",
        choices=["all", "blocks", "leaky"],
        default="all",
        help="blocks: whole blocks only; leaky: the leaky average only",
    )
    p.add_argument("--profile", action="store_true", help="print the kernels of each compiled block")
    p.add_argument("--methods", nargs="+", choices=METHODS, help="the leaky-average forms to time (default: all)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="gpu_ops.json")
    args = p.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu_ops.py needs a CUDA GPU (or --device cpu)")
    torch.backends.cuda.matmul.allow_tf32 = True
    time_ms = timer(dev, args.repeats)
    d, H = args.n_embd, args.n_head
    Dh, N = d // H, int(round(3.5 * d))
    rows = []

    def record(context: int, what: str, fn) -> None:
        try:
            ms = time_ms(fn)
        except Exception as err:  # keep measuring the other rows; record why this one failed
            rows.append({"context": context, "what": what, "error": repr(err)[:300]})
            print(f"T {context:5d}  {what:48s} failed: {err!r}"[:200], flush=True)
            return
        rows.append({"context": context, "what": what, "ms": ms})
        print(f"T {context:5d}  {what:48s} {ms:9.3f} ms", flush=True)
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "rows": rows}, f, indent=1)

    for T in args.contexts:
        B = max(1, args.tokens // T)
        x = torch.randn(B, T, d, device=dev, requires_grad=True)
        for dropout in (0.05, 0.0) if args.parts != "leaky" else ():
            base = dict(vocab_size=64, n_layer=12, n_head=H, n_embd=d, dropout=dropout)
            torch.manual_seed(0)
            mosaic = MosaicBlock(MosaicConfig(**base, attn_dropout=0.0, pmem_attn_dropout=dropout)).to(dev).train()
            gpt = GPTBlock(GPTConfig(**base, block_size=T)).to(dev).train()
            tag = f"dropout {dropout}"
            record(T, f"GPT-2 block, eager, {tag}", fwd_bwd(gpt, x, dev))
            record(T, f"Mosaic block, eager, {tag}", fwd_bwd(mosaic, x, dev))
            record(T, f"  GPT-2 attention, {tag}", fwd_bwd(gpt.attn, x, dev))
            record(T, f"  Mosaic contextual memory, {tag}", fwd_bwd(mosaic.cmem, x, dev))
            record(T, f"  GPT-2 MLP, {tag}", fwd_bwd(gpt.mlp, x, dev))
            record(T, f"  Mosaic persistent memory, {tag}", fwd_bwd(mosaic.pmem, x, dev))
            if not args.no_compile:
                for name, block in (("GPT-2", gpt), ("Mosaic", mosaic)):
                    torch._dynamo.reset()  # a fresh compilation: no shapes made dynamic by earlier ones
                    run = fwd_bwd(torch.compile(block), x, dev)
                    record(T, f"{name} block, compiled, {tag}", run)
                    if args.profile:
                        print(kernel_table(run), flush=True)
            if args.parts == "blocks":
                continue
        if args.parts == "blocks":
            continue
        q = torch.randn(B, H, T, Dh, device=dev, requires_grad=True)
        kappa = torch.randn(1, H, N, Dh, device=dev, requires_grad=True)
        u = torch.randn(1, H, N, Dh, device=dev, requires_grad=True)
        for dropout in (0.05, 0.0) if args.parts != "leaky" else ():
            record(
                T,
                f"P-mem readout, expanded bank, dropout {dropout}",
                fwd_bwd(lambda q: memory_readout(q, kappa, u, dropout), q, dev),
            )
            record(
                T,
                f"P-mem readout, folded batch, dropout {dropout}",
                fwd_bwd(lambda q: folded_readout(q, kappa, u, dropout), q, dev),
            )
        log_decay = torch.linspace(-0.5, -5.0, H, device=dev).view(1, H, 1)
        xs = q.detach().to(torch.bfloat16 if dev == "cuda" else torch.float32).requires_grad_()
        methods = args.methods or ("chunked", "scan") + (("native",) if dev == "cpu" else ("assoc", "triton"))
        for method in methods:
            leaky = lambda x, method=method: LeakyAverage.apply(x, log_decay, None, method)  # noqa: E731
            record(T, f"leaky average, {method}", fwd_bwd(leaky, xs, dev))
            if not args.no_compile:
                record(T, f"leaky average, {method}, compiled", fwd_bwd(torch.compile(leaky), xs, dev))


if __name__ == "__main__":
    main()
