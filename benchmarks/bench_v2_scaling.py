"""Forward time and peak memory against the sequence length T: v2's short-term memory (dense band
mask vs the O(T w) banded op), and whole models (Mosaic v1, Mosaic v2, GPT-2).

Each point runs in a fresh child process: the time is the min of ``--repeats`` forward passes (no
grad, batch 1, one thread unless ``--threads``), the memory the growth of the peak resident set
size (ru_maxrss) during them. Writes a JSON file and a log-log figure (the slope is the point: 1 is
linear in T, 2 quadratic).

    python benchmarks/bench_v2_scaling.py [--T 1024 4096 16384 65536] [--out results/v2_scaling]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import header

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM
from memory_mosaics.ops.banded import banded_retrieval
from memory_mosaics.plotting import pyplot

WINDOW = 256  # v2's h: the short-term memory reads lags 1 .. h - 1
MODEL = dict(vocab_size=8192, n_layer=2, n_head=4, n_embd=256, dropout=0.0)
V2 = dict(
    key_extractor="gated",
    bandwidth="adaptive",
    short_term_window=WINDOW,
    long_term_skip_min=64,
    long_term_skip_max=256,
    persistent="swiglu",
)
OPS = ("dense band", "banded")
MODELS = ("mosaic v1", "mosaic v2", "gpt-2")
DENSE_MAX_T = 16384  # the dense (T, T) mask beyond this needs more memory than the point is worth


def dense_band(q, k, v, min_lag: int, max_lag: int):
    """The short-term memory as before: SDPA under the (T, T) band mask, after the shift."""
    n = q.shape[2] - min_lag
    lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    band = (lag >= 0) & (lag <= max_lag - min_lag)
    out = F.scaled_dot_product_attention(q[:, :, min_lag:], k[:, :, :n], v[:, :, :n], attn_mask=band, scale=1.0)
    return F.pad(out, (0, 0, min_lag, 0))


def build(name: str, T: int):
    torch.manual_seed(0)
    if name in OPS:
        qkv = [torch.randn(1, MODEL["n_head"], T, MODEL["n_embd"] // MODEL["n_head"]) for _ in range(3)]
        fn = dense_band if name == "dense band" else banded_retrieval
        return lambda: fn(*qkv, 1, WINDOW - 1)
    if name == "gpt-2":
        model = GPTLM(GPTConfig(**MODEL, block_size=T)).eval()
    else:
        model = MosaicLM(MosaicConfig(**MODEL, attn_dropout=0.0, **(V2 if name == "mosaic v2" else {}))).eval()
    idx = torch.randint(0, MODEL["vocab_size"], (1, T))
    return lambda: model(idx)


def child(name: str, T: int, repeats: int) -> None:
    fn = build(name, T)
    with torch.no_grad():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"time_s": min(times), "peak_growth_mib": (after - before) / 1024}))


def measure(name: str, T: int, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--T", str(T), "--repeats", str(repeats)]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def slope(points: list[dict], key: str) -> float:
    """Least-squares slope of log(key) against log(T) over the two largest T (the asymptote)."""
    pts = [p for p in points if p[key] > 0][-2:]
    if len(pts) < 2:
        return float("nan")
    x, y = np.log([p["T"] for p in pts]), np.log([p[key] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in zip(axes, ("time_s", "peak_growth_mib"), ("forward time (s)", "peak memory growth (MiB)")):
        for name, points in results.items():
            pts = [p for p in points if p[key] > 0]
            ax.loglog(
                [p["T"] for p in pts], [p[key] for p in pts], marker="o", label=f"{name} ({slope(points, key):.2f})"
            )
        ax.set_xlabel("T")
        ax.set_ylabel(label)
        ax.legend(title="slope, two largest T", fontsize=8)
    fig.suptitle(f"window h = {WINDOW}; models: n_layer 2, d 256, 4 heads; batch 1, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--model-max-T", type=int, default=16384, help="largest T for the whole models (quadratic parts)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/v2_scaling", help="writes OUT.json and OUT.png")
    p.add_argument("--child", choices=OPS + MODELS, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args.T[0], args.repeats)
    header(f"v2 scaling: forward time and peak memory vs T (window {WINDOW})")
    results = {}
    for name in OPS + MODELS:
        limit = DENSE_MAX_T if name == "dense band" else (args.model_max_T if name in MODELS else max(args.T))
        results[name] = []
        for T in [t for t in args.T if t <= limit]:
            point = {"T": T, **measure(name, T, args.repeats, args.threads)}
            results[name].append(point)
            print(f"{name:11s} T={T:6d}  {point['time_s']:8.3f} s  {point['peak_growth_mib']:9.1f} MiB", flush=True)
    for name, points in results.items():
        print(
            f"{name:11s} slope (two largest T): time {slope(points, 'time_s'):.2f}, "
            f"memory {slope(points, 'peak_growth_mib'):.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"window": WINDOW, "model": MODEL, "results": results}, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
