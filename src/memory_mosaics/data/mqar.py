"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (Arora et al. 2023,
"Zoology: Measuring and Improving Recall in Efficient Language Models", arXiv 2312.04927, section 3
and its code, github.com/HazyResearch/zoology, ``zoology/data/multiquery_ar.py``).

One example of a :class:`MQARSetting` (sequence length L, P key-value pairs, vocabulary V):

    tokens  k_1 v_1 k_2 v_2 ... k_P v_P | . . k_3 . . . k_1 . . ... (L - 2P tokens)
    labels  -100 everywhere, except at the position of each queried key, whose label is its value

* keys are P distinct tokens of ``1 .. V/2 - 1``, values P distinct tokens of ``V/2 .. V - 1`` (the
  two vocabularies are split, so a value is never mistaken for a key);
* the P pairs come first, as ``k v`` bigrams; then every key is queried once, in the second part of
  the sequence, at an even offset ``2 g`` where the gaps g are P distinct slots out of
  ``S = (L - 2P) / 2`` drawn without replacement with the power law ``p(g) ∝ a g^(a - 1)``,
  g = 1 .. S (slot g sits at offset 2 (g - 1)); a = 0.01 puts most queries close to the pairs;
* the label of a queried key's position is its value (the model must output the value there), so
  accuracy is the argmax accuracy over the P queried positions;
* every other position of the second part holds a uniformly random token of ``0 .. V - 1`` (Zoology's
  ``random_non_queries=True``; with False it holds 0).

Splits: a fixed test set per setting, from a seed of its own (:func:`setting_seed`); training sets
from other seeds. Everything is drawn with a ``torch.Generator`` on the CPU, so the same seed gives
the same tensors on every machine.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..models.base import IGNORE_INDEX  # label of every position that is not a query

_CHUNK = 1024  # examples drawn at a time (bounds the (chunk, V/2) buffer of the key draws)


@dataclass(frozen=True)
class MQARSetting:
    """One MQAR setting: ``seq_len`` tokens, ``num_pairs`` key-value pairs, ``vocab_size`` tokens,
    power-law exponent ``power_a`` of the query gaps."""

    seq_len: int
    num_pairs: int
    vocab_size: int = 8192
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self):
        if self.seq_len <= 0 or self.seq_len % 2:
            raise ValueError(f"MQAR seq_len must be a positive even number, got {self.seq_len}")
        if self.num_pairs <= 0 or 4 * self.num_pairs > self.seq_len:
            raise ValueError(f"MQAR needs 1 <= num_pairs <= seq_len / 4, got {self.num_pairs} pairs at {self.seq_len}")
        if self.vocab_size <= self.seq_len or self.vocab_size // 2 - 1 < self.num_pairs:
            raise ValueError(f"MQAR vocab_size must exceed seq_len and 2 * num_pairs, got {self.vocab_size}")
        if not 0.0 < self.power_a <= 1.0:
            raise ValueError(f"MQAR power_a must be in (0, 1], got {self.power_a}")

    @property
    def name(self) -> str:
        return f"L{self.seq_len}-kv{self.num_pairs}"

    @property
    def num_slots(self) -> int:
        """S = (L - 2P) / 2: the even offsets of the query part where a key may be queried."""
        return (self.seq_len - 2 * self.num_pairs) // 2

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class MQARData:
    """``inputs`` (n, L) int64 tokens; ``labels`` (n, L) int64, :data:`IGNORE_INDEX` except at the
    P queried positions of every row."""

    setting: MQARSetting
    inputs: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


def gap_probabilities(num_slots: int, power_a: float) -> Tensor:
    """p(g) = a g^(a - 1) / sum_g' a g'^(a - 1) over g = 1 .. S (float64, (S,)); a = 1 is uniform."""
    g = torch.arange(1, num_slots + 1, dtype=torch.float64)
    p = power_a * g ** (power_a - 1.0)
    return p / p.sum()


def _distinct(n: int, low: int, high: int, k: int, generator: torch.Generator) -> Tensor:
    """(n, k) int64: per row, k distinct tokens drawn uniformly from ``low .. high - 1``."""
    rows = []
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        rows.append(torch.rand(m, high - low, generator=generator).topk(k, dim=1).indices + low)
    return torch.cat(rows)


def make_mqar(setting: MQARSetting, num_examples: int, seed: int) -> MQARData:
    """``num_examples`` MQAR examples of ``setting`` (module docstring), drawn from ``seed``."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    gen = torch.Generator().manual_seed(seed)
    n, L, P, V = num_examples, setting.seq_len, setting.num_pairs, setting.vocab_size
    keys = _distinct(n, 1, V // 2, P, gen)  # (n, P) in 1 .. V/2 - 1
    values = _distinct(n, V // 2, V, P, gen)  # (n, P) in V/2 .. V - 1
    p = gap_probabilities(setting.num_slots, setting.power_a).float()
    slots = torch.multinomial(p.expand(n, -1), P, replacement=False, generator=gen)  # (n, P), g - 1
    query_pos = 2 * P + 2 * slots  # position of each key's query
    inputs = torch.zeros(n, L, dtype=torch.int64)
    inputs[:, 0 : 2 * P : 2], inputs[:, 1 : 2 * P : 2] = keys, values
    noise = torch.randint(V, (n, L - 2 * P), generator=gen)
    if setting.random_non_queries:
        inputs[:, 2 * P :] = noise
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((n, L), IGNORE_INDEX, dtype=torch.int64)
    labels.scatter_(1, query_pos, values)
    return MQARData(setting, inputs, labels)


def setting_seed(setting: MQARSetting, base: int) -> int:
    """A seed of its own for each (setting, base): CRC32 of the setting's fields, plus ``base``
    times a large odd number, modulo 2^62 (stable across runs and machines, unlike ``hash``)."""
    text = ",".join(f"{k}={v}" for k, v in sorted(setting.to_json().items()))
    return (zlib.crc32(text.encode()) + base * 1_000_003) % (1 << 62)


TEST_SEED = 1_000_000  # base of every fixed test set; training sets use bases 0, 1, ... (the run's data seed)


def make_test_set(setting: MQARSetting, num_examples: int) -> MQARData:
    """The fixed test set of ``setting``: the same ``num_examples`` examples for every model and run."""
    return make_mqar(setting, num_examples, setting_seed(setting, TEST_SEED))


def make_train_set(setting: MQARSetting, num_examples: int, data_seed: int = 0) -> MQARData:
    """A training set of ``setting`` (never the test set's seed: ``data_seed`` < :data:`TEST_SEED`)."""
    if not 0 <= data_seed < TEST_SEED:
        raise ValueError(f"MQAR data seed must be in 0 .. {TEST_SEED - 1}, got {data_seed}")
    return make_mqar(setting, num_examples, setting_seed(setting, data_seed))
