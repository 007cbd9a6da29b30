"""Three moons (spec 4.1): three points turning on circles at different periods, observed as R^6.

A system is a triple of periods ``p_1, p_2, p_3`` (units of time). At integer step ``n`` the time
is ``n / STEPS_PER_UNIT`` and moon j is at angle

    theta_j(n) = 2 pi n / (p_j * STEPS_PER_UNIT) + 0.3                       (spec: phase offset 0.3)

observed as ``x_n = [sin theta_1, cos theta_1, sin theta_2, cos theta_2, sin theta_3, cos theta_3]``.

Complex layout. :class:`~memory_mosaics.layers.ComplexLinear` reads coordinate pairs as
``(re, im)``, so moon j is the complex number ``z_j = sin theta_j + i cos theta_j = i exp(-i theta_j)``
and one step of its motion is the complex multiplication ``z_j(n+1) = exp(-2 pi i / P_j) z_j(n)``
(``P_j`` = period in steps): a moon's rotation is a diagonal complex-linear map, which the 54
complex parameters of the model can express exactly. (The other pairing, ``cos + i sin``, gives
``exp(+i theta)``; either works, what matters is that every moon uses the same one.)

Systems (spec): the 35 triples of distinct periods from {0.5, 1, ..., 3.5}, sorted by combined
period (LCM at 0.1 precision), keep the first 9; the 9th is the validation system, the first 8
train. Five triples tie at combined period 6.0 and three of them are kept; the sort is stable on
the lexicographic order of ``itertools.combinations``, so the validation system is (1, 1.5, 2).
The reference code sorts with numpy's default (unstable) ``np.argsort``, whose tie order depends on
numpy's version and the CPU; ``tie_break="numpy"`` repeats that call here (with numpy 2.4 on an
AVX-512 x86-64 CPU it validates on (1, 2, 3) and trains on (1, 1.5, 2)).

Time step (spec): ``800 / 6 / 3`` steps per unit of time, so that an 800-step window covers three
of the longest combined period among the kept systems (6.0 units = 266.7 steps).

Samples: random windows of a long series of ``SERIES_LENGTH`` steps; target ``y_n = x_{n+1}``.

Observer on a moon (``observer="moon"``, not in the paper's runs): the observer sits on moon 1 in a
frame turning with it. Slot 1 keeps moon 1's own position ``z_1`` (its orbital phase, seen from the
centre); slots 2 and 3 hold ``z_j * conj(z_1)``, the direction of moon j in moon 1's rotating
frame. These still have unit norm and still rotate uniformly, at the synodic periods
``1 / |1/p_j - 1/p_1|``; the combined period is unchanged. (The reference code's "planet" observer
instead subtracts the positions, a translation, which breaks the unit norm.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from itertools import combinations

import torch
from torch import Tensor

PERIOD_CHOICES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
N_KEPT = 9
PHASE = 0.3
WINDOW = 800
PERIODS_PER_WINDOW = 3
LONGEST_COMBINED = 6.0  # the largest combined period among the 9 kept systems (checked in tests)
STEPS_PER_UNIT = WINDOW / LONGEST_COMBINED / PERIODS_PER_WINDOW  # 800 / 6 / 3 = 44.44
SERIES_LENGTH = 10_000
UNSEEN_PERIODS = (0.75, 1.25, 2.25)  # no moon period of the 9 spec systems; combined 11.25 units
OBSERVERS = ("sun", "moon")


def combined_period(periods: tuple[float, ...], decimals: int = 1) -> float:
    """Least common multiple of the periods after rounding them to ``decimals`` decimals (spec: 1)."""
    scale = 10**decimals
    return reduce(math.lcm, (round(p * scale) for p in periods)) / scale


def _exact_decimals(periods: tuple[float, ...], max_decimals: int = 6) -> int:
    """The fewest decimals that represent every period exactly (0.75 needs 2)."""
    for d in range(max_decimals + 1):
        if all(abs(p * 10**d - round(p * 10**d)) < 1e-9 for p in periods):
            return d
    raise ValueError(f"periods {periods} are not multiples of 10^-{max_decimals}: no finite combined period")


@dataclass(frozen=True)
class MoonSystem:
    """Three moons with the given periods (units of time), observed from the centre or from moon 1."""

    periods: tuple[float, float, float]
    observer: str = "sun"

    def __post_init__(self):
        if len(self.periods) != 3 or min(self.periods) <= 0:
            raise ValueError(f"a moon system needs three positive periods, got {self.periods}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")

    @property
    def combined_period(self) -> float:
        """LCM of the periods (units), at the finest precision the periods need (spec systems: 0.1)."""
        return combined_period(self.periods, _exact_decimals(self.periods))

    @property
    def apparent_periods(self) -> tuple[float, float, float]:
        """Periods of the three observed complex coordinates (synodic periods for the moon observer)."""
        if self.observer == "sun":
            return self.periods
        p1 = self.periods[0]
        synodic = tuple(math.inf if p == p1 else 1.0 / abs(1.0 / p - 1.0 / p1) for p in self.periods[1:])
        return (p1, *synodic)

    def periods_in_steps(self) -> list[float]:
        return [p * STEPS_PER_UNIT for p in self.apparent_periods]

    def combined_period_in_steps(self) -> float:
        return self.combined_period * STEPS_PER_UNIT

    def observe(self, n: Tensor) -> Tensor:
        """Observations at integer steps n (...,) -> (..., 6) float32, pairs (sin, cos) = (re, im)."""
        t = n.to(torch.float64)[..., None] / STEPS_PER_UNIT
        periods = torch.tensor(self.periods, dtype=torch.float64)
        theta = 2 * math.pi * t / periods + PHASE  # (..., 3)
        z = torch.complex(torch.sin(theta), torch.cos(theta))  # z_j = i exp(-i theta_j)
        if self.observer == "moon":
            z = torch.cat([z[..., :1], z[..., 1:] * z[..., :1].conj()], dim=-1)
        return torch.view_as_real(z).flatten(-2).to(torch.float32)  # (re_1, im_1, re_2, ...)

    def series(self, length: int = SERIES_LENGTH) -> Tensor:
        """The long series x_0 .. x_{length-1}: (length, 6)."""
        return self.observe(torch.arange(length))

    def windows(
        self, count: int, length: int = WINDOW, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``count`` random windows of the long series: x (count, length, 6) and targets y_n = x_{n+1}."""
        starts = torch.randint(0, SERIES_LENGTH - length, (count,), generator=generator)
        seq = self.observe(starts[:, None] + torch.arange(length + 1))  # (count, length + 1, 6)
        return seq[:, :-1], seq[:, 1:]


TIE_BREAKS = ("stable", "numpy")


def spec_systems(observer: str = "sun", tie_break: str = "stable") -> tuple[list[MoonSystem], MoonSystem]:
    """The 8 training systems and the validation system of spec 4.1 (``tie_break``: see the module doc)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    triples = list(combinations(PERIOD_CHOICES, 3))  # 35 = C(7, 3)
    if tie_break == "stable":
        kept = sorted(triples, key=combined_period)[:N_KEPT]  # ties keep lexicographic order
    else:
        import numpy as np

        order = np.argsort(np.array([combined_period(t) for t in triples]))  # the reference's call
        kept = [triples[i] for i in order[:N_KEPT]]
    systems = [MoonSystem(t, observer) for t in kept]
    return systems[:-1], systems[-1]


def sample_batch(
    systems: list[MoonSystem], batch_size: int, length: int = WINDOW, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A training batch: each row is a random window of a uniformly drawn system. x, y (B, length, 6)."""
    which = torch.randint(0, len(systems), (batch_size,), generator=generator)
    xs, ys = zip(*(systems[i].windows(1, length, generator) for i in which.tolist()))
    return torch.cat(xs), torch.cat(ys)
