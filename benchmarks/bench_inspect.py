"""`mosaics inspect` speed and page size: a 2,000-token text through the benchmark Mosaic
(4 layers, 4 heads, d 256, vocab 8192), from the token ids to the written HTML page.

Target of issue 13: under 10 s on this project's CPU. Prints the time of each stage (best of
``--repeats``) and the page's size.

    python benchmarks/bench_inspect.py [--tokens 2000] [--top-k 8] [--threads 1] [--model mosaic|v2|gpt]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import best_time, gpt, header, mosaic

from memory_mosaics.inspect import inspect
from memory_mosaics.inspect.export import language_dict
from memory_mosaics.inspect.page import write_page

MODELS = {
    "mosaic": lambda T: mosaic(),
    "v2": lambda T: mosaic(key_extractor="gated", bandwidth="adaptive", short_term_window=256, persistent="swiglu"),
    "gpt": lambda T: gpt(block_size=T),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", choices=list(MODELS), default="mosaic")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header(f"inspect: {args.tokens} tokens, {args.model}, top-k {args.top_k}")
    model = MODELS[args.model](args.tokens).eval()
    idx = torch.randint(0, 8192, (args.tokens,))
    vocab = {i: f"t{i}" for i in range(8192)}
    tokens = [vocab[i] for i in idx.tolist()]
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"

        def end_to_end():
            ins = inspect(model, idx, top_k=args.top_k)
            return write_page(language_dict(ins, tokens, vocab), page)

        t_inspect = best_time(lambda: inspect(model, idx, top_k=args.top_k), args.repeats)
        ins = inspect(model, idx, top_k=args.top_k)
        t_export = best_time(lambda: language_dict(ins, tokens, vocab), args.repeats)
        start = time.perf_counter()
        size = end_to_end()
        total = time.perf_counter() - start
    print(f"inspect (forward, retrieval, lens): {t_inspect:.2f} s")
    print(f"export to JSON-ready data:          {t_export:.2f} s")
    print(f"end to end, ids -> page written:    {total:.2f} s (target < 10 s)")
    print(f"page size: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
