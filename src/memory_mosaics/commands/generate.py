"""``mosaics generate``: continue a prompt with a trained model, streaming the text as it comes.

    mosaics generate --checkpoint runs/mosaic --prompt "Once upon a time" --max-new-tokens 200
    echo "Lily saw a cat." | mosaics generate --checkpoint runs/mosaic --temperature 0.8 --top-k 50

The prompt is preceded by the end-of-text token (the start of a document in training); generation
stops at the next end-of-text token, before the first ``--stop`` text, or after ``--max-new-tokens``;
``--top-p`` and ``--repetition-penalty`` shape the sampling as in ``LanguageModel.iter_generate``.

Options are checked before the model is loaded: ``--temperature`` is 0 (greedy) or a finite number
>= ``MIN_TEMPERATURE`` (1e-3; below it sampling is greedy in effect and the scaled logits overflow),
``--top-k`` >= 1, ``--seed`` in [0, 2**63 - 1]. A prompt (from ``--prompt`` or stdin) must be UTF-8
text: other bytes are an error, never silently replaced. A prompt longer than ``--max-prompt-tokens``
(default 100,000), or whose forward pass would not fit in memory (estimated from the model's sizes), is
refused with the estimate; one longer than 4,096 tokens is announced on stderr with the time it took.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

HELP = "generate text from a checkpoint (prompt from --prompt or stdin), streamed to stdout"
MIN_TEMPERATURE = 1e-3  # smallest non-zero --temperature; 0 means greedy
MAX_SEED = 2**63 - 1
DEFAULT_MAX_PROMPT_TOKENS = 100_000
PROGRESS_TOKENS = 4096  # a longer prompt is announced on stderr, and the time it took to read


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="checkpoint folder or run directory (uses its 'last')"
    )
    parser.add_argument("--prompt", help="prompt text (default: read from stdin; empty when stdin is a terminal)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0, help=f"0 means greedy, else >= {MIN_TEMPERATURE:g}")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    parser.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: the most likely tokens up to mass p"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=None, help="divide the positive logits of tokens already seen by it"
    )
    parser.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-echo", action="store_true", help="print the continuation only, not the prompt")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decoding step (pays off on long generations; for a Mosaic on the CPU, whose "
        "eager step runs its C kernels, the two are close)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        help="refuse a longer prompt (default %(default)s; a Mosaic reads a prompt in time O(T^2))",
    )


def check_options(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first out-of-range option (before any work)."""
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    t = args.temperature
    if not math.isfinite(t) or t < 0 or 0 < t < MIN_TEMPERATURE:
        raise ValueError(f"--temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}, got {t!r}")
    if args.top_k is not None and args.top_k <= 0:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    r = args.repetition_penalty
    if r is not None and not (r > 0 and math.isfinite(r)):
        raise ValueError(f"--repetition-penalty must be a finite number > 0, got {r}")
    if any(not stop for stop in args.stop):
        raise ValueError("--stop needs a non-empty text")
    if args.max_prompt_tokens < 1:
        raise ValueError(f"--max-prompt-tokens must be >= 1, got {args.max_prompt_tokens}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:  # undecodable argv bytes arrive as surrogate escapes
            raise ValueError("--prompt is not UTF-8 text; pass UTF-8 (or pipe the prompt on stdin)") from None


def read_stdin_prompt() -> str:
    if sys.stdin.isatty():
        return ""
    buffer = getattr(sys.stdin, "buffer", None)  # the bytes, whatever the locale's error handler
    try:
        if buffer is not None:
            return buffer.read().decode("utf-8").replace("\r\n", "\n")  # as text mode reads it
        text = sys.stdin.read()
        text.encode("utf-8")  # surrogate escapes of undecodable bytes
        return text
    except UnicodeDecodeError as err:
        raise ValueError(f"the prompt on stdin is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except UnicodeEncodeError:
        raise ValueError("the prompt on stdin is not UTF-8 text") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import load_pretrained
    from ..models.generation import truncate_at_stop
    from ..training.checkpoint import resolve_checkpoint
    from ..training.distributed import resolve_device
    from ._checks import check_forward_fits, check_saved_model, load_checkpoint_tokenizer

    check_options(args)
    ckpt = resolve_checkpoint(args.checkpoint)
    check_saved_model(ckpt)
    device = resolve_device(args.device)
    model = load_pretrained(ckpt).to(device)
    tokenizer = load_checkpoint_tokenizer(ckpt)
    prompt = args.prompt
    if prompt is None:
        prompt = read_stdin_prompt()
    ids = [tokenizer.eot_id, *tokenizer.encode(prompt)]
    block = getattr(model.config, "block_size", None)
    if block is not None:  # a GPT's positions end at block_size: keep the prompt's tail
        if args.max_new_tokens >= block:
            raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be below the model's block_size {block}")
        ids = ids[-(block - args.max_new_tokens) :]
    if len(ids) > args.max_prompt_tokens:
        raise ValueError(
            f"the prompt has {len(ids):,} tokens, more than --max-prompt-tokens {args.max_prompt_tokens:,}; "
            "shorten it or raise the limit"
        )
    check_forward_fits(
        model.config, len(ids) + args.max_new_tokens, 1, "the prompt", "shorten it or use a machine with more memory"
    )
    if len(ids) > PROGRESS_TOKENS:
        print(f"mosaics: reading a prompt of {len(ids):,} tokens ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    if not args.no_echo:
        out.write(prompt)
        out.flush()
    new: list[int] = []
    shown = 0
    for i, token in enumerate(
        model.iter_generate(
            torch.tensor([ids], device=device),
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            eos_token=tokenizer.eot_id,
            generator=generator,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            stop_strings=args.stop,
            decode=tokenizer.decode,
            compile=args.compile,
        )
    ):
        if i == 0 and len(ids) > PROGRESS_TOKENS:
            print(f"mosaics: prompt read in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        t = int(token[0, 0])
        if t == tokenizer.eot_id:
            break
        new.append(t)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            continue
        safe = len(text) - _held_back(text, args.stop)
        if safe > shown:
            out.write(text[shown:safe])
            out.flush()
            shown = safe
    out.write(truncate_at_stop(tokenizer.decode(new), args.stop)[shown:] + "\n")
    out.flush()
    return 0


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may still become (or are) a stop string: they are
    written only once the continuation shows they are not one."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return len(text) - min(found)
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
