"""The experiment's sizes (spec 4.1 training, evaluation grid), its two models and its fixed names."""

from __future__ import annotations

from dataclasses import dataclass

MODELS = {"1head": 1, "3heads": 3}  # model name -> number of heads
HEADS_ARG = {"1": ["1head"], "3": ["3heads"], "both": list(MODELS)}
SPLITS = ("train", "validation", "unseen")
REGIONS = ("before_periods", "between_periods", "after_combined")
EVAL_SEED = 1234  # the evaluation windows are the same for every training seed
DISENTANGLED = 0.95  # a 3-head model "tracks one moon per head" at this disentanglement score


@dataclass(frozen=True)
class Settings:
    """Training (spec 4.1) and evaluation sizes."""

    steps: int = 500
    batch_size: int = 64
    lr: tuple[float, float] = (1e-2, 5e-6)  # linear from first to last step
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # per raw weight of the reference (MLX's default); 2e-8 per complex parameter
    bias_correction: bool = False  # False: MLX's Adam on the reference's raw weights (see train.py)
    clip: float = 0.5
    eval_windows: int = 32  # per system
    context_step: int = 10
    max_context: int = 700
    gen_steps: int = 25

    @property
    def contexts(self) -> list[int]:
        return list(range(self.context_step, self.max_context + 1, self.context_step))


FULL = Settings()
QUICK = Settings(steps=10, batch_size=8, eval_windows=2, context_step=50)
