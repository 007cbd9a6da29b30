"""Training step (forward + backward + AdamW) tokens/s: MosaicLM vs GPTLM of the same size.

    python benchmarks/bench_train_step.py [--T 256 1024] [--batch 4] [--repeats 5]
                                          [--dropout 0 0.05] [--precision fp32 bf16] [--compile]
                                          [--keep-cpu-memory] [--json results.json]

For every context T, dropout and precision it prints both models' tokens/s (min of ``repeats``
steps, the two models' steps alternating) and their ratio, with the median and range of the
per-round ratios (``common.Ratio``).
``--dropout 0.05`` is the default dropouts of each model's training recipe: the Mosaic's residual
and P-mem retrieval dropout (the authors' language models apply none to the contextual memory's
retrieval weights), GPT-2's residual and attention dropout. ``bf16``: the forward under CPU autocast
to bfloat16 (weights and optimiser in fp32). ``--compile``: both models under ``torch.compile``
(compiled afresh for each configuration; the first, compiling step is the warm-up, not timed).
``--keep-cpu-memory``: glibc's allocator keeps freed memory for reuse, as the trainer does on the CPU
(``training.allocator``), for both models; by default the benchmark keeps glibc's own policy.
"""

import argparse
import contextlib
import json

import torch
from common import Ratio, alternated, gpt, header, json_out, mosaic, positive_int, probability

from memory_mosaics.training.allocator import keep_freed_memory


def step_fn(model, T, batch, precision="fp32", compile=False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, model.config.vocab_size, (batch, T + 1))
    forward = torch.compile(model) if compile else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
            _, loss = forward(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=positive_int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--dropout", type=probability, nargs="+", default=[0.0, 0.05])
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="both models under torch.compile")
    p.add_argument("--keep-cpu-memory", action="store_true", help="keep freed memory for reuse, as the trainer does")
    p.add_argument("--json", type=json_out, help="also write every round's times and the ratios here")
    args = p.parse_args()
    mode = ", torch.compile" if args.compile else ""
    if args.keep_cpu_memory:
        mode += ", freed memory kept" if keep_freed_memory() else ", (freed memory could not be kept here)"
    header(f"training step, n_layer 4, n_head 4, d 256, vocab 8192, batch {args.batch}{mode}")
    results = []
    for T in args.T:
        for dropout in args.dropout:
            for precision in args.precision:
                torch.manual_seed(0)
                models = {
                    "mosaic": mosaic(dropout=dropout, pmem_attn_dropout=dropout).train(),
                    "gpt": gpt(T, dropout=dropout).train(),
                }
                tag = f"T={T:5d} dropout {dropout} {precision}"
                if args.compile:
                    torch._dynamo.reset()  # fresh compilations: no shapes made dynamic by earlier configurations
                steps = {name: step_fn(model, T, args.batch, precision, args.compile) for name, model in models.items()}
                for step in steps.values():
                    step()  # warm-up (with --compile: the compilation)
                rounds = alternated(steps, args.repeats)
                for name, ts in rounds.items():
                    print(f"{tag}  {name:6s} {min(ts) * 1e3:8.1f} ms/step {args.batch * T / min(ts):8.0f} tok/s")
                ratio = Ratio.of(rounds["gpt"], rounds["mosaic"])  # tokens/s: the inverse of the times' ratio
                print(f"{tag}  mosaic / gpt tokens/s ratio: {ratio}", flush=True)
                results.append(
                    dict(T=T, dropout=dropout, precision=precision, seconds=rounds, tokens_per_s_ratio=vars(ratio))
                )
    if args.json:
        args.json.write_text(
            json.dumps({"threads": torch.get_num_threads(), "batch": args.batch, "runs": results}, indent=1)
        )


if __name__ == "__main__":
    main()
