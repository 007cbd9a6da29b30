"""Decoding speed: 256 new tokens after a 768-token prompt (batch 1, greedy, fp32).

Compares MosaicLM with its memory as the cache, MosaicLM recomputing the full forward for every
new token, and GPTLM with its KV cache.

    python benchmarks/bench_decode.py [--prompt 768] [--new 256] [--repeats 3]
"""

import argparse

import torch
from common import best_time, gpt, header, mosaic


@torch.no_grad()
def recompute(model, idx, new):
    """Greedy decoding without a cache: a full forward over the whole sequence for every token."""
    for _ in range(new):
        nxt = model(idx)[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@torch.no_grad()
def recompute_time(model, prompt_len, new, samples=5, repeats=2):
    """Time of ``recompute`` for ``new`` tokens, from timed forwards at evenly spaced lengths.

    Step i costs one forward over prompt_len + i tokens; the mean over evenly spaced lengths times
    ``new`` estimates the sum without running all ``new`` forwards (minutes on a CPU).
    """
    lengths = torch.linspace(prompt_len, prompt_len + new - 1, samples).round().long().tolist()
    per_step = [best_time(lambda n=n: model(torch.randint(0, 8192, (1, n))), repeats) for n in lengths]
    return sum(per_step) / len(per_step) * new


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, default=768)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    header(f"decoding {args.new} tokens after a {args.prompt}-token prompt, n_layer 4, d 256, batch 1")
    torch.manual_seed(0)
    m, g = mosaic().eval(), gpt(args.prompt + args.new).eval()
    prompt = torch.randint(0, 8192, (1, args.prompt))
    t_cache = best_time(lambda: m.generate(prompt, args.new, temperature=0), args.repeats)
    t_gpt = best_time(lambda: g.generate(prompt, args.new, temperature=0), args.repeats)
    t_full = recompute_time(m, args.prompt, args.new)
    assert torch.equal(m.generate(prompt, 16, temperature=0), recompute(m, prompt, 16))
    rate = lambda t: args.new / t  # noqa: E731
    print(f"mosaic, memory as cache   {t_cache:7.2f} s  {rate(t_cache):7.1f} tokens/s")
    print(f"mosaic, full recompute    {t_full:7.2f} s  {rate(t_full):7.1f} tokens/s  (from 5 timed forward lengths)")
    print(f"gpt, KV cache             {t_gpt:7.2f} s  {rate(t_gpt):7.1f} tokens/s")
    print(f"speed-up of the memory cache over recomputation: {t_full / t_cache:.1f}x")
    print(f"mosaic cache time / gpt cache time: {t_cache / t_gpt:.2f}")


if __name__ == "__main__":
    main()
