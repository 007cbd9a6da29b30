"""The ``lm-evaluation-harness`` model ``mosaics``: any package checkpoint or HF folder (or Hub id),
scored with the package's own tokenizer and decoding.

    mosaics lm-eval --checkpoint runs/lang/last --tasks lambada_openai hellaswag
    python -m memory_mosaics.hf.harness --model mosaics --model_args pretrained=DIR --tasks piqa

(the second line is ``lm_eval``'s own command line, with this model registered first; ``lm_eval``
has no plugin discovery for models). Requests:

* ``loglikelihood(context, continuation)``: log p(continuation | end-of-text + context) and whether
  greedy decoding would produce it; rows are right-padded into batches (a causal model's real
  positions never see the padding), longest first.
* ``loglikelihood_rolling(text)``: the whole text after an end-of-text token, one window for a Mosaic
  (no positions: any length); windows of ``block_size`` for the GPT baseline (``lm_eval``'s
  rolling windows).
* ``generate_until(context, gen_kwargs)``: left-padded batches through the package's ``generate``
  (memories as the cache), stopping at the ``until`` strings or the end-of-text token.
"""

from __future__ import annotations

import sys
import warnings
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..data.tokenizers import load_tokenizer
from ..models.generation import truncate_at_stop
from ..training.checkpoint import resolve_checkpoint
from ..training.distributed import resolve_device
from .convert import is_hf_folder, load_native
from .hub import resolve


@register_model("mosaics")
class MosaicsLM(LM):
    """``pretrained``: folder or Hub id; ``batch_size``; ``device``: auto, cpu, cuda or cuda:N
    (lm_eval's default ``cuda:0`` means the CPU, with a warning, on a machine without CUDA)."""

    def __init__(self, pretrained: str, batch_size: int | str | None = 8, device: str | None = "cpu", **kwargs):
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:  # lm_eval's default is cuda:0, even without CUDA
                warnings.warn(f"device {device!r} requested but CUDA is not available: using the CPU", stacklevel=2)
            device = "cpu"
        device = resolve_device(device)
        batch_size = batch_size or 8
        folder = resolve(pretrained)
        if not is_hf_folder(folder):
            folder = resolve_checkpoint(folder)  # a run directory: its 'last' checkpoint
        self.model = load_native(folder).to(device).eval()
        self.tokenizer = load_tokenizer(folder)
        self.eot = self.tokenizer.eot_id
        self.batch_size = max(1, int(batch_size)) if str(batch_size) != "auto" else 8
        self._device = device  # LM.device reads it
        self.max_length = getattr(self.model.config, "block_size", None)  # None: a Mosaic reads any length

    # ------------------------------------------------------------------ scoring
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())  # "a " + "b" -> "a" + " b", as lm_eval's HF model
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        return [self.eot, *self.tokenizer.encode(context)], self.tokenizer.encode(continuation)

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation tokens), all greedy) for (context ids, continuation ids) pairs;
        each sequence is truncated on the left to the model's ``block_size`` if it has one."""
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        seqs = []
        for ctx, cont in pairs:
            seq = (ctx + cont)[:-1]
            if self.max_length is not None:
                seq = seq[-self.max_length :]
            seqs.append((seq, cont))
        order = sorted(range(len(pairs)), key=lambda i: -len(seqs[i][0]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            T = len(seqs[batch[0]][0])
            idx = torch.zeros(len(batch), T, dtype=torch.long)
            for row, i in enumerate(batch):
                idx[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
            logp = F.log_softmax(self.model(idx.to(self.device)).float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                seq, cont = seqs[i]
                end = len(seq)
                cont_logp = logp[row, end - len(cont) : end]  # position t predicts token t + 1
                target = torch.tensor(cont)
                total = cont_logp.gather(1, target[:, None]).sum().item()
                results[i] = (total, bool((cont_logp.argmax(-1) == target).all()))
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.score([self._encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for r in requests:
            tokens = self.tokenizer.encode(r.args[0])
            if self.max_length is None:
                windows = [([self.eot], tokens)]
            else:
                rolling = get_rolling_token_windows(tokens, self.eot, self.max_length, 1)
                windows = [make_disjoint_window(w) for w in rolling]
            out.append(sum(lp for lp, _ in self.score(windows)))
        return out

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups = defaultdict(list)  # same generation settings -> one batch stream
        for i, r in enumerate(requests):
            context, kwargs = r.args
            groups[repr(sorted(kwargs.items()))].append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [[self.eot, *self.tokenizer.encode(requests[i].args[0])] for i in batch]
                if self.max_length is not None:
                    prompts = [p[-(self.max_length - max_new) :] for p in prompts]
                T = max(len(p) for p in prompts)
                idx = torch.zeros(len(prompts), T, dtype=torch.long)
                mask = torch.zeros_like(idx)
                for row, p in enumerate(prompts):
                    idx[row, T - len(p) :], mask[row, T - len(p) :] = torch.tensor(p), 1
                out = self.model.generate(
                    idx.to(self.device),
                    max_new,
                    temperature=temperature,
                    eos_token=self.eot,
                    attention_mask=mask.to(self.device),
                    stop_strings=until,
                    decode=self.tokenizer.decode,
                )
                for row, i in enumerate(batch):
                    new = out[row, T:].tolist()
                    new = new[: new.index(self.eot)] if self.eot in new else new
                    results[i] = truncate_at_stop(self.tokenizer.decode(new), until)
        return results


def main(argv: list[str] | None = None) -> None:
    """``lm_eval``'s command line with the ``mosaics`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
