"""Training step (forward + backward + AdamW) tokens/s: MosaicLM vs GPTLM of the same size.

python benchmarks/bench_train_step.py [--T 256 1024] [--batch 4] [--repeats 5]
"""

import argparse

import torch
from common import best_time, gpt, header, mosaic


def step_fn(model, T, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, model.config.vocab_size, (batch, T + 1))

    def step():
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    header(f"training step, n_layer 4, n_head 4, d 256, vocab 8192, batch {args.batch}, fp32")
    for T in args.T:
        torch.manual_seed(0)
        models = {"mosaic": mosaic().train(), "gpt": gpt(T).train()}
        tps = {}
        for name, model in models.items():
            t = best_time(step_fn(model, T, args.batch), args.repeats)
            tps[name] = args.batch * T / t
            size = f"params {model.num_params() / 1e6:6.2f}M"
            print(f"T={T:5d}  {name:6s} {size}  {t * 1e3:8.1f} ms/step  {tps[name]:8.0f} tokens/s")
        print(f"T={T:5d}  mosaic / gpt tokens/s ratio: {tps['mosaic'] / tps['gpt']:.2f}")


if __name__ == "__main__":
    main()
