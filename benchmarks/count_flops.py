"""FLOPs of one training step (forward + backward), MosaicLM vs GPTLM of the same size.

    python benchmarks/count_flops.py [--T 256 1024] [--batch 4]

``torch.utils.flop_counter`` counts the matrix products (projections, LM head); the reads (SDPA)
are counted here, from their shapes, as a training step runs: a read of M queries against N pairs
of width D is one score product ``q k^T`` and one weighted sum, 2 M N D FLOPs each (half of that
under a causal mask), and its backward four more (the gradients of the weights, q, k and v); a
flash-style backward, which the fast reads on the CPU and on GPUs use, recomputes the scores: one
product more. It prints, per model, the GFLOPs of the products, of the reads, the step's total with
and without the recomputation, and the ratio Mosaic / GPT-2: above 1, the Mosaic does more
arithmetic per token, and equal tokens/s would need a faster arithmetic rate than GPT-2's.
"""

import argparse

import torch
import torch.nn.functional as F
from common import gpt, header, mosaic
from torch.utils.flop_counter import FlopCounterMode


def count(model, T: int, batch: int) -> dict[str, float]:
    """GFLOPs of one forward + backward on random tokens: products ("mm"), reads ("reads", six
    products each) and the reads' score products ("scores", recomputed by a flash-style backward)."""
    idx = torch.randint(0, model.config.vocab_size, (batch, T + 1))
    products = []
    sdpa = F.scaled_dot_product_attention

    def counted(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        M = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]).numel() * q.shape[-2]
        products.append(2 * M * k.shape[-2] * q.shape[-1] * (0.5 if is_causal else 1.0))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    F.scaled_dot_product_attention = counted  # the function every read of both models calls
    try:
        with FlopCounterMode(display=False) as counter:
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
    finally:
        F.scaled_dot_product_attention = sdpa
    return {"mm": counter.get_total_flops() / 1e9, "reads": 6 * sum(products) / 1e9, "scores": sum(products) / 1e9}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    header(f"FLOPs of a training step, n_layer 4, n_head 4, d 256, vocab 8192, batch {args.batch}")
    for T in args.T:
        torch.manual_seed(0)
        totals = {}
        for name, model in (("mosaic", mosaic()), ("gpt", gpt(T))):
            c = count(model, T, args.batch)
            totals[name] = (c["mm"] + c["reads"], c["mm"] + c["reads"] + c["scores"])
            print(
                f"T={T:5d} {name:6s} products {c['mm']:7.2f}  reads {c['reads']:6.2f}  total {totals[name][0]:7.2f}"
                f"  with flash recompute {totals[name][1]:7.2f} GFLOP"
            )
        exact, flash = (totals["mosaic"][i] / totals["gpt"][i] for i in (0, 1))
        print(f"T={T:5d} mosaic / gpt FLOPs: {exact:.3f} (reads as counted), {flash:.3f} (flash backward)", flush=True)


if __name__ == "__main__":
    main()
