"""One trainer for :class:`MosaicLM` and :class:`GPTLM`.

``Trainer(config, out_dir, resume).fit()``: AdamW over the reference decay groups, linear warm-up
then cosine decay, gradient clipping and accumulation, autocast (bf16, or fp16 with a grad scaler)
on CUDA and fp32 on CPU, optional ``torch.compile``, periodic evaluation and checkpoints, metrics
in ``metrics.jsonl`` / ``metrics.csv`` (and TensorBoard when installed), a progress bar.

Batches: every optimiser step draws the *global* batch (``batch_size`` random crops) from one
``torch.Generator`` seeded identically on every process, and each process keeps its own rows of
it, so N processes with micro-batch b follow exactly the run of one process with batch N b. The
generator's state is checkpointed, so a resumed run draws the batches the uninterrupted run would.
Data parallelism (torchrun + DDP) lives in :mod:`.distributed`; with ``parallel = "fsdp"`` the model is
sharded (FSDP2), and checkpoints carry the sharded state, by :mod:`.sharding`.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..data.sources import build_tokenizer, open_corpus, resolve_cache_dir
from ..data.tokenizers import load_tokenizer
from ..eval.language import evaluate
from ..models import lookup
from . import allocator, distributed, sharding
from . import checkpoint as checkpoints
from .config import TrainConfig
from .loop import OptimizerStep, TrainingDiverged
from .metrics import MetricsLog
from .optim import build_optimizer, warmup_cosine

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``dtype`` setting (None: plain fp32)."""
    if dtype == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    return AMP_DTYPES[dtype]


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Set everything up from a :class:`TrainConfig`; :meth:`fit` runs the loop.

    The main process holds an exclusive lock on ``out_dir`` (``train.lock``, with its pid) from here to
    the end of :meth:`fit` or :meth:`close`: a second training on the same folder is refused. Without
    ``resume``, an ``out_dir`` holding anything of a previous run (checkpoints, metrics, config,
    manifest, links) is refused; with it, the run continues from ``out_dir/last`` when that is an
    intact checkpoint, else from the newest intact one (said in the log), and starts afresh when
    there is none. Temporaries of killed saves are swept first.
    """

    lock: checkpoints.RunLock | None = None

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        resume: bool = False,
        log: Callable[[str], None] = tqdm.write,
    ):
        cfg = self.cfg = config
        self.out = Path(out_dir)
        self.finished = False  # fit() ran to max_steps
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = d = distributed.init(cfg.device)
        self.device = d.device
        if cfg.keep_cpu_memory and self.device.type == "cpu":
            allocator.keep_freed_memory()
        self.log = log if d.is_main else (lambda msg: None)
        if not cfg.train:
            raise ValueError("no training data: pass --data PATH or set `train` in the config file")
        self.micro_batch, rest = divmod(cfg.batch_size, cfg.grad_accum * d.world_size)
        if rest or not self.micro_batch:
            raise ValueError(
                f"batch_size {cfg.batch_size} is not a multiple of grad_accum x processes "
                f"= {cfg.grad_accum} x {d.world_size}"
            )
        try:
            self._setup(resume, d)
        except BaseException:
            self._release_lock()
            raise

    def _setup(self, resume: bool, d: distributed.Dist) -> None:
        cfg = self.cfg
        if d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = checkpoints.RunLock(self.out)
            found = checkpoints.previous_run(self.out)
            if found and not resume:
                shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
                raise ValueError(
                    f"{self.out} holds a previous run ({shown}); pass --resume to continue it or choose another --out"
                )
            checkpoints.read_manifest(self.out)  # an unreadable manifest fails now, not at the first save
            swept = checkpoints.sweep_temporaries(self.out)
            if swept:
                self.log(f"removed {len(swept)} temporary file(s) of an interrupted save in {self.out}")
        ckpt = None
        if resume:
            with distributed.main_first(d):  # rank 0 reports; every process finds the same checkpoint
                ckpt, note = checkpoints.find_resume_checkpoint(self.out) if self.out.is_dir() else (None, None)
            if note:
                self.log(f"{self.out}: {note}")
        self.last_good: Path | None = ckpt
        self.last_loss: float | None = None
        self.amp_dtype = amp_dtype(cfg.dtype, self.device)
        progress = cfg.progress and d.is_main

        # data (rank 0 builds the caches, the others then read them)
        cache_root = resolve_cache_dir(cfg.cache_dir)
        with distributed.main_first(d):
            self.tokenizer = (
                load_tokenizer(ckpt)
                if ckpt
                else build_tokenizer(cfg.tokenizer, cfg.train, cache_root, cfg.separator, cfg.text_field, progress)
            )
            self.train_data = open_corpus(
                cfg.train, self.tokenizer, cache_root, cfg.separator, cfg.text_field, progress
            )
            self.valid_data = (
                open_corpus(cfg.valid, self.tokenizer, cache_root, cfg.separator, cfg.text_field, progress)
                if cfg.valid
                else None
            )
        for corpus in (self.train_data, self.valid_data):
            if corpus is not None:
                corpus.num_eval_windows(cfg.context)  # a corpus shorter than one context fails here, clearly

        # model and optimiser
        torch.manual_seed(cfg.seed)
        self.model = lookup(cfg.model)[1](cfg.model_config(self.tokenizer.vocab_size))
        if ckpt:
            checkpoints.load_weights(self.model, ckpt)
        self.model.to(self.device)
        if cfg.activation_checkpointing:
            sharding.checkpoint_activations(self.model)
        if cfg.parallel == "fsdp":  # before the optimiser, which then holds the sharded parameters
            sharding.shard(self.model, d)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        world = d.world_size
        self.optimizer_step = OptimizerStep(
            self.model,
            self.optimizer,
            lambda step: warmup_cosine(
                step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.max_steps, from_zero=cfg.warmup_from_zero
            ),
            cfg.grad_clip,
            self.scaler,
            reduce=lambda total: distributed.all_reduce_sum(total).item() / world,
        )
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed + 1 + d.rank)  # dropout: one stream per process
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.step, self.tokens_seen, self.best_val, self.data_time = 0, 0, math.inf, 0.0
        if ckpt:
            try:
                self._restore(checkpoints.load_state(ckpt), ckpt)
            except (ValueError, KeyError, TypeError, RuntimeError) as err:  # e.g. another optimiser's groups
                raise ValueError(
                    f"cannot restore the training state of {ckpt}: {err}; use another checkpoint"
                ) from None
            self.log(f"resumed from {ckpt} at step {self.step}")
        elif resume:
            self.log(f"no checkpoint in {self.out}; starting from scratch (metrics are appended)")
        self.ddp = distributed.wrap(self.model, d) if cfg.parallel == "ddp" else self.model
        self.train_model = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.metrics = None
        if d.is_main:
            cfg.save(self.out)
            self.metrics = MetricsLog(self.out, cfg.tensorboard)

    # ------------------------------------------------------------------ one step
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of the next global batch, shaped (grad_accum, micro_batch, context)."""
        cfg, d = self.cfg, self.dist
        x, y = self.train_data.random_crops(cfg.batch_size, cfg.context, self.data_gen)
        shape = (cfg.grad_accum, d.world_size, self.micro_batch, cfg.context)
        x, y = x.view(shape)[:, d.rank], y.view(shape)[:, d.rank]
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_step(self) -> tuple[float, float | None]:
        """One optimiser step; returns (global mean loss, gradient norm before clipping or None without clipping)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        x, y = self.next_batch()
        self.data_time = time.perf_counter() - t0

        def micro_loss(a: int) -> torch.Tensor:
            with self.autocast():
                return self.train_model(x[a], y[a])[1]

        def sync_last(a: int):
            return distributed.no_sync(self.ddp, sync=a == cfg.grad_accum - 1)

        try:
            result = self.optimizer_step(self.step, micro_loss, cfg.grad_accum, sync_last)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err}; training stopped, {self._kept()}") from None
        self.last_loss = result.loss
        self.step += 1
        self.tokens_seen += cfg.batch_size * cfg.context
        return result.loss, result.grad_norm

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps``; return a summary (step, last train loss, last validation loss, tokens/s)."""
        cfg = self.cfg
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (cfg.progress and self.dist.is_main),
        )
        start = time.perf_counter()
        win = {"loss": 0.0, "steps": 0, "time": 0.0, "data": 0.0}
        summary: dict[str, Any] = {"train_loss": None, "val_loss": None}
        train_time = 0.0
        tokens_at_start = self.tokens_seen
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                loss, grad_norm = self.train_step()
                dt = time.perf_counter() - t0
                train_time += dt
                win["loss"] += loss
                win["steps"] += 1
                win["time"] += dt
                win["data"] += self.data_time
                tok_s = win["steps"] * cfg.batch_size * cfg.context / win["time"]
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                    summary["train_loss"] = win["loss"] / win["steps"]
                    self._log(
                        {
                            "split": "train",
                            "loss": summary["train_loss"],
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "grad_norm": grad_norm,
                            "tokens_per_s": tok_s,
                            "data_fraction": win["data"] / win["time"],
                            "elapsed_s": time.perf_counter() - start,
                        }
                    )
                    win = {"loss": 0.0, "steps": 0, "time": 0.0, "data": 0.0}
                improved = False
                if self.valid_data is not None and (
                    (cfg.eval_interval and self.step % cfg.eval_interval == 0) or self.step == cfg.max_steps
                ):
                    result = self.evaluate()
                    summary["val_loss"] = result["loss"]
                    self._log(
                        {
                            "split": "valid",
                            "loss": result["loss"],
                            "perplexity": result["perplexity"],
                            "elapsed_s": time.perf_counter() - start,
                        }
                    )
                    self.log(
                        f"step {self.step}: valid loss {result['loss']:.4f} (perplexity {result['perplexity']:.2f})"
                    )
                    diagnostics = self.diagnostics()
                    if diagnostics:
                        self._log({"split": "diagnostics", **diagnostics})
                    improved = result["loss"] < self.best_val
                    self.best_val = min(self.best_val, result["loss"])
                if (
                    (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0)
                    or self.step == cfg.max_steps
                    or (improved and cfg.keep_best)
                ):
                    self.save(best=improved and cfg.keep_best)
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
            self._release_lock()
        tokens_done = self.tokens_seen - tokens_at_start
        summary.update(
            step=self.step,
            tokens_per_s=tokens_done / train_time if train_time else None,
            checkpoint=str(checkpoints.latest_checkpoint(self.out)) if self.dist.is_main else None,
        )
        self.finished = True
        return summary

    def evaluate(self) -> dict[str, Any]:
        """Validation loss, perplexity and loss by position over ``eval_windows`` fixed windows."""
        cfg = self.cfg
        with sharding.gathered(self.model):  # a sharded model's forward would wait on the other processes
            return evaluate(
                self.model,
                self.valid_data,
                cfg.context,
                self.dist,
                max_windows=cfg.eval_windows or None,
                batch_size=cfg.eval_batch_size,
                device=self.device,
                amp_dtype=self.amp_dtype,
            )

    def diagnostics(self) -> dict[str, float]:
        """The model's :meth:`~LanguageModel.diagnostics` on the first 8 validation windows, on rank 0
        ({} on the others; every process takes part in gathering a sharded model)."""
        x, _ = next(iter(self.valid_data.eval_windows(self.cfg.context, 8, 8)))
        was_training = self.model.training
        self.model.eval()
        try:
            with sharding.gathered(self.model), self.autocast():
                return self.model.diagnostics(x.to(self.device)) if self.dist.is_main else {}
        finally:
            self.model.train(was_training)

    def _log(self, row: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log({"step": self.step, "tokens": self.tokens_seen, **row})

    # ------------------------------------------------------------------ checkpoints
    def save(self, best: bool = False) -> Path | None:
        """Checkpoint the current step (every process takes part; rank 0 writes).

        Only a good state is written: the last training loss must be finite and every weight finite
        (else :class:`TrainingDiverged`, naming the last good checkpoint), so ``last`` never points at
        a diverged state. The weights are the same on every process, so all of them decide alike.
        """
        d = self.dist
        bad = sharding.nonfinite(self.model)
        if bad or (self.last_loss is not None and not math.isfinite(self.last_loss)):
            what = f"{len(bad)} weight tensor(s) are not finite (e.g. {bad[0]})" if bad else "the loss is not finite"
            raise TrainingDiverged(f"{what} after step {self.step}; training stopped, {self._kept()}")
        torch_rng = distributed.all_gather(torch.get_rng_state(), d)
        cuda_rng = (
            distributed.all_gather(torch.cuda.get_rng_state(self.device), d) if self.device.type == "cuda" else []
        )
        staged, weights = None, self.model
        if self.cfg.parallel == "fsdp":  # every process writes its shards, rank 0 the full weights
            staged = checkpoints.staging_folder(self.out, self.step)
            if d.is_main:
                shutil.rmtree(staged, ignore_errors=True)
            distributed.barrier()
            sharding.save_sharded(self.model, self.optimizer, staged / checkpoints.SHARDED_DIR)
            weights = sharding.consolidated(self.model, d)
        path = None
        if d.is_main:
            state = {
                "format": 1,
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "best_val": self.best_val,
                **({"sharded": checkpoints.SHARDED_DIR} if staged else {"optimizer": self.optimizer.state_dict()}),
                "scaler": self.scaler.state_dict(),
                "scheduler": {"name": "warmup_cosine", "step": self.step},
                "data_rng": self.data_gen.get_state(),
                "torch_rng": torch_rng,
                "cuda_rng": cuda_rng,
                "world_size": d.world_size,
            }
            links = ("last", "best") if best else ("last",)
            path = checkpoints.save_checkpoint(
                self.out, self.step, weights, self.tokenizer, self.cfg, state, links, staged=staged
            )
            self.last_good = path.resolve()
        distributed.barrier()
        return path

    def _kept(self) -> str:
        """Where the last good state is, for a divergence message."""
        if self.last_good is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is kept: {self.last_good}"

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _restore(self, state: dict[str, Any], ckpt: Path) -> None:
        if state.get("sharded"):  # written with parallel = fsdp, by any number of processes
            sharding.load_sharded(self.model, self.optimizer, ckpt / checkpoints.SHARDED_DIR)
        elif sharding.is_sharded(self.model):  # an unsharded run continued sharded
            sharding.load_full_optimizer(self.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen, self.best_val = state["step"], state["tokens_seen"], state["best_val"]
        self.data_gen.set_state(state["data_rng"])
        rank, world = self.dist.rank, self.dist.world_size
        if len(state["torch_rng"]) == world:
            torch.set_rng_state(state["torch_rng"][rank])
            if self.device.type == "cuda" and len(state["cuda_rng"]) == world:
                torch.cuda.set_rng_state(state["cuda_rng"][rank], self.device)
        else:
            self.log(
                f"checkpoint written by {len(state['torch_rng'])} processes, resumed by {world}: "
                "dropout streams are reseeded (the batches are unchanged)"
            )
            torch.manual_seed(self.cfg.seed + 1 + rank + self.step * world)

    def close(self) -> None:
        """Release the run's lock and leave the process group. After a finished ``fit`` every
        process first waits for the others; DDP's reducer, which holds the group, is dropped before
        the group is destroyed (destroyed later, at interpreter exit, gloo could wait forever for a
        peer that has already gone)."""
        self._release_lock()
        if self.finished:
            distributed.barrier()
        self.ddp = self.train_model = None
        gc.collect()
        distributed.shutdown()
