"""Decoding speed: 256 new tokens after a 768-token prompt (greedy, fp32).

Compares MosaicLM with its memory as the cache, MosaicLM recomputing the full forward for every
new token (batch 1), and GPTLM with its KV cache, at each batch size; with ``--compile`` also both
models with their decoding step under ``torch.compile`` (timed after a warm-up generation that
compiles it; the compilation time is printed). The two models' generations alternate, min of
``repeats`` each; the Mosaic / GPT-2 ratio is printed with the median and range of the per-round
ratios (``common.Ratio``).

    python benchmarks/bench_decode.py [--prompt 768] [--new 256] [--batch 1 8] [--repeats 5] [--compile]
                                      [--json results.json]
"""

import argparse
import json
import time

import torch
from common import Ratio, alternated, best_time, gpt, header, json_out, mosaic, positive_int


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
    p.add_argument("--prompt", type=positive_int, default=768)
    p.add_argument("--new", type=positive_int, default=256)
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--compile", action="store_true", help="also time compiled decoding steps")
    p.add_argument("--json", type=json_out, help="also write every round's times and the ratios here")
    args = p.parse_args()
    header(f"decoding {args.new} tokens after a {args.prompt}-token prompt, n_layer 4, d 256")
    torch.manual_seed(0)
    m, g = mosaic().eval(), gpt(args.prompt + args.new).eval()
    rate = lambda t, B: B * args.new / t  # noqa: E731
    results = []
    for B in args.batch:
        prompt = torch.randint(0, 8192, (B, args.prompt))
        modes = [False, True] if args.compile else [False]
        times = {}
        for compiled in modes:
            runs = {}
            if compiled:
                torch._dynamo.reset()  # both steps compiled from scratch, then both kept
            for name, model in (("mosaic", m), ("gpt", g)):
                options = {"compile": True} if compiled else {}
                runs[name] = lambda model=model, options=options: model.generate(  # noqa: E731
                    prompt, args.new, temperature=0, **options
                )
                if compiled:
                    start = time.perf_counter()
                    runs[name]()
                    print(f"batch {B}: {name} compiled step: first generation {time.perf_counter() - start:.1f} s")
                else:
                    runs[name]()  # warm-up
            rounds = alternated(runs, args.repeats)
            for name, ts in rounds.items():
                t = times[name, compiled] = min(ts)
                label = f"{name}, {'memory' if name == 'mosaic' else 'KV'} cache{', compiled' if compiled else ''}"
                print(f"batch {B}: {label:32s} {t:7.2f} s  {rate(t, B):8.1f} tokens/s")
            ratio = Ratio.of(rounds["mosaic"], rounds["gpt"])
            print(f"batch {B}: mosaic cache time / gpt cache time{' (both compiled)' if compiled else ''}: {ratio}")
            results.append({"batch": B, "compiled": compiled, "seconds": rounds, "ratio": vars(ratio)})
        if B == 1:
            t_full = recompute_time(m, args.prompt, args.new)
            assert torch.equal(m.generate(prompt, 16, temperature=0), recompute(m, prompt, 16))
            print(f"batch 1: mosaic, full recompute {t_full:7.2f} s  (from 5 timed forward lengths)")
            print(f"batch 1: speed-up of the memory cache over recomputation: {t_full / times['mosaic', False]:.1f}x")
            results.append({"batch": 1, "recompute_seconds": t_full, "speedup": t_full / times["mosaic", False]})
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
