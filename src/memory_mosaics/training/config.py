"""The training configuration: one flat dataclass, read from a TOML or JSON file plus overrides.

Resolution order: dataclass defaults < config file < command-line overrides. Every key is checked:
an unknown one raises a ``ValueError`` naming it. Extra model fields (``pmem_size``,
``key_extractor``, ``bias``...) go in the ``model_args`` table and are checked by the model's own
config class.

Data paths may start with ``shared:`` to point into the shared data folder
(``$MOSAICS_SHARED_DATA``, else ``<repo>/../shared/data``), e.g. ``shared:tinystories/train.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import configs
from ..io import atomic_write_text
from ..models import ModelConfig, lookup

DTYPES = ("auto", "fp32", "bf16", "fp16")
PARALLEL = ("ddp", "fsdp")
CONFIG_FILE = "train_config.json"
MAX_SEED = 2**63 - 1  # torch's and numpy's generators take 64-bit seeds
MAX_LR = 1e30  # larger ones overflow float32 inside the optimiser (a traceback, not a divergence)


def max_threads() -> int:
    """The most CPU threads an option may ask for: the machine's CPUs (more only thrashes; 100,000
    crashed the process)."""
    return os.cpu_count() or 1


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_fits(n_layer: int, n_embd: int) -> None:
    """Refuse a model whose fp32 weights alone cannot fit in this machine's memory, before any work.
    The estimate is a lower bound (4 x n_layer x n_embd^2 parameters: the attention projections), so a
    model refused here could never be built; one accepted may still run out of memory later."""
    total = memory_bytes()
    need = 4 * n_layer * n_embd**2 * 4
    if total and need > total:
        raise ValueError(
            f"this model (n_layer={n_layer}, n_embd={n_embd}) needs at least ~{need / 2**30:,.1f} GiB of parameters; "
            f"the machine has {total / 2**30:,.1f} GiB: choose a smaller --n-layer or --n-embd"
        )


def _flag(name: str) -> str:
    """The command-line option of a config key (``grad_clip`` -> ``--grad-clip``)."""
    return "--" + name.split("[")[0].replace("_", "-")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``batch_size`` is the *global* batch (sequences per
    optimiser step, summed over processes and accumulation micro-steps)."""

    # data
    train: str = ""  # corpus path (file, folder or .jsonl), or shared:RELATIVE_PATH
    valid: str = ""  # optional validation corpus; "" -> no periodic evaluation
    tokenizer: str = "bpe:4096"  # bpe:VOCAB (trained on `train`), gpt2[:RANKS_PATH] or a directory
    cache_dir: str = ""  # "" -> $MOSAICS_CACHE_DIR, else ~/.cache/memory_mosaics
    separator: str = "eot"  # document separator of text files: eot | blank
    text_field: str = "text"  # field of .jsonl records
    # model
    model: str = "mosaic"  # a registered model kind (memory_mosaics.models.model_kinds()): mosaic | gpt
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    context: int = 256  # training crop length (GPT's block_size)
    dropout: float = 0.05  # residual dropout; retrieval/attention dropout as the reference (model_config)
    vocab_multiple: int = 64  # pad the vocabulary to a multiple of this (50257 -> 50304)
    model_args: dict = field(default_factory=dict)  # extra MosaicConfig / GPTConfig fields
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 1e-4
    warmup: int = 100
    warmup_from_zero: bool = True  # the reference warm-up lr * step / warmup (0 at step 0); False: (step + 1)
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 disables clipping
    # run
    eval_interval: int = 200  # steps between validation passes (0: only at the end)
    eval_windows: int = 64  # validation windows of `context` tokens per pass (0: the whole split)
    eval_batch_size: int = 16
    log_interval: int = 10
    checkpoint_interval: int = 500  # 0: only at the end
    keep_best: bool = True  # keep the checkpoint with the best validation loss as `best`
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16, else fp16, on CUDA; fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False
    parallel: str = "ddp"  # several processes: ddp (replicated weights) | fsdp (weights, grads, optimiser sharded)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (training.sharding)
    threads: int = 0  # CPU threads of this process (0: PyTorch's default)
    keep_cpu_memory: bool = True  # on the CPU, keep freed memory for reuse (glibc): no page faults every step
    progress: bool = True
    tensorboard: bool = True  # also log to TensorBoard when it is installed

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on any out-of-range or non-finite value, naming the key, its option and the
        value (types are checked by :func:`from_dict`). NaN and infinities are refused everywhere: a
        NaN ``grad_clip`` would silently turn clipping off."""
        lookup(self.model)  # an unknown kind raises, naming the registered ones
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"unknown parallel {self.parallel!r} (--parallel); expected one of {', '.join(PARALLEL)}")
        for name in (
            "n_layer",
            "n_head",
            "n_embd",
            "context",
            "vocab_multiple",
            "batch_size",
            "grad_accum",
            "max_steps",
            "log_interval",
            "eval_batch_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({_flag(name)}) must be positive, got {getattr(self, name)!r}")
        for name in ("warmup", "eval_interval", "eval_windows", "checkpoint_interval", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} ({_flag(name)}) must be >= 0, got {getattr(self, name)!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas (--betas) must be two numbers in [0, 1), got {list(self.betas)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "dropout", "betas[0]", "betas[1]"):
            value = self.betas[int(name[-2])] if name.startswith("betas[") else getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} ({_flag(name)}) must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr (--lr) must be > 0, got {self.lr!r}")
        for name in ("lr", "min_lr"):
            value = getattr(self, name)
            if value > MAX_LR:
                raise ValueError(
                    f"{name} ({_flag(name)}) must be at most {MAX_LR:g} (an Adam step is lr-sized), got {value!r}"
                )
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} ({_flag(name)}) must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout (--dropout) must be in [0, 1), got {self.dropout!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas (--betas) must be two numbers in [0, 1), got {list(self.betas)}")
        if self.threads > max_threads():
            raise ValueError(
                f"threads (--threads) must be at most {max_threads()} (the machine's CPUs), got {self.threads}"
            )
        check_model_fits(self.n_layer, self.n_embd)
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed (--seed) must be in [0, 2**63 - 1], got {self.seed}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: "TrainConfig | None" = None) -> "TrainConfig":
        """``base`` (default: the defaults) updated with ``d``; unknown keys and wrong types raise."""
        values = (base or cls()).to_dict()
        values.update(_checked(d))
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike, base: "TrainConfig | None" = None) -> "TrainConfig":
        return cls.from_dict(read_config_file(path), base)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    # ------------------------------------------------------------------ derived values
    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model config for a tokenizer of ``vocab_size`` ids (padded to ``vocab_multiple``);
        each kind places ``dropout`` as the authors' runs did (``ModelConfig.training_fields``)."""
        padded = -(-vocab_size // self.vocab_multiple) * self.vocab_multiple
        return lookup(self.model)[0].from_training(self, padded)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a ``.toml`` or ``.json`` config file, or of a packaged preset named ``path``
    (``cpu-d128``: :func:`memory_mosaics.configs.resolve`)."""
    path = configs.resolve(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err})") from None
        except RecursionError:
            raise ValueError(f"{path}: invalid JSON (nested too deeply)") from None
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ValueError(
                    f"reading {path} needs Python >= 3.11 or the tomli package; or write the config as JSON"
                ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML ({err})") from None
    else:
        raise ValueError(f"config file {path} must end in .toml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a table of keys")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> (key, value); the value is read as JSON when it parses, else kept a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        value = raw
    return key.strip(), value


def _checked(d: dict[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
    defaults = TrainConfig.__dataclass_fields__
    out = {}
    for key, value in d.items():
        f = defaults[key]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out[key] = _coerce(key, value, default)
    return out


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of the field's default (ints are accepted for floats)."""
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = _as_float(key, value) if ok else value
    elif kind is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
        value = tuple(_as_float(key, v) for v in value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"config key {key!r} expects a value of type {kind.__name__}, got {value!r}")
    return value


def _as_float(key: str, value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"config key {key!r}: {value} is too large for a float") from None
