"""The decoding step's overhead outside the arithmetic: per-token time of tiny models.

    python benchmarks/bench_step_overhead.py [--new 256] [--repeats 5]

MosaicLM and GPTLM with n_layer 4, n_head 4 and d 32 (vocab 64) do almost no arithmetic per token,
so their step time is what a step costs besides its products and reads: Python, module calls and
operator dispatch (eager), guards and kernel launches (both steps under ``torch.compile``). At batch 1
and the benchmark size this overhead is most of the gap ``bench_decode.py`` measures between the two.
Per-token time: a generation of ``new`` tokens minus one of 1 token, divided by ``new - 1``; min over
``repeats``.
"""

import argparse
import time

import torch
from common import header

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM

TINY = dict(vocab_size=64, n_layer=4, n_head=4, n_embd=32, dropout=0.0)


def per_token(model, prompt: torch.Tensor, new: int, repeats: int, compiled: bool) -> float:
    options = {"compile": True} if compiled else {}
    run = lambda n: model.generate(prompt, n, temperature=0, **options)  # noqa: E731
    if compiled:
        torch._dynamo.reset()
    run(8)  # warm-up (compiles the step)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(new)
        long = time.perf_counter() - start
        start = time.perf_counter()
        run(1)
        best = min(best, (long - (time.perf_counter() - start)) / (new - 1))
    return best


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    header("decoding step of tiny models (n_layer 4, d 32), batch 1, microseconds per token")
    torch.manual_seed(0)
    models = {
        "mosaic": MosaicLM(MosaicConfig(**TINY, attn_dropout=0.0)).eval(),
        "gpt": GPTLM(GPTConfig(**TINY, block_size=args.new + 64)).eval(),
    }
    prompt = torch.randint(0, TINY["vocab_size"], (1, 16))
    for compiled in (False, True):
        t = {name: per_token(m, prompt, args.new, args.repeats, compiled) * 1e6 for name, m in models.items()}
        mode = "compiled" if compiled else "eager"
        print(
            f"{mode:8s} mosaic {t['mosaic']:7.0f}  gpt {t['gpt']:7.0f}  difference {t['mosaic'] - t['gpt']:6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
