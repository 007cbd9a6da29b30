"""RegBench: in-context language learning on random regular languages.

Model-independent data half of RegBench (Akyurek, Wang, Kim, Andreas, ICML 2024); the spec is
``docs/regbench.md`` of the project. One *environment* is one random automaton (a partial DFA
whose states all accept, so its language is the set of prefixes of its walks) together with one
fixed prompt: 10-19 random walks from the start state joined by the separator ``|``.

Vocabulary (20 ids in code-point order): pad ``.`` = 0, letters ``a``..``r`` = 1..18,
separator ``|`` = 19. There is no BOS/EOS token.

Deliberate deviations from the reference code (github.com/berlino/seq_icl, ``dfa.py``):

1. **One fixed test set for all N.** The reference draws train and test automata from a single
   stream, so its test set changes with the number of training environments N. Here the test
   and validation environments come first, from their own random stream derived from the seed,
   so they are identical for every ``num_train``; training environments come from a second stream
   (and the N=100 training set is a prefix of the N=1000 one).
2. **De-duplication by canonical form.** The reference hashes a DFA by its sorted transitions but
   never compares for equality, so duplicate automata (also across splits) slip through. Here
   every automaton is reduced to the canonical form of its minimal automaton (BFS renumbering from
   the start state, letters in increasing order) and an automaton whose canonical form was already
   drawn, in any split, is rejected and redrawn.

The generator uses numpy only; :func:`collate` returns torch tensors for training.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

PAD = 0
SEP = 19
VOCAB_SIZE = 20
IGNORE_INDEX = -100
LETTERS = np.arange(1, 19)
ALPHABET = ".abcdefghijklmnopqr|"
_CHAR_TO_ID = {ch: i for i, ch in enumerate(ALPHABET)}

MIN_STATES, MAX_STATES = 4, 12
MIN_ALPHABET, MAX_ALPHABET = 4, 18
MAX_OUT_EDGES = 3
MIN_STRINGS, MAX_STRINGS = 10, 19
MIN_STRING_LEN, MAX_STRING_LEN = 1, 49
SPLITS = ("test", "validation", "train")
MAX_PROMPT_TOKENS = MAX_STRINGS * (MAX_STRING_LEN + 1)  # the longest prompt sample_prompt can draw


def encode(text: str) -> list[int]:
    """Map a string over ``.a-r|`` to token ids."""
    return [_CHAR_TO_ID[ch] for ch in text]


def decode(ids: Iterable[int]) -> str:
    """Map token ids back to their characters."""
    return "".join(ALPHABET[int(i)] for i in ids)


@dataclass(eq=False)
class Automaton:
    """A partial DFA over the token ids; every state accepts.

    ``transitions`` has shape (num_states, VOCAB_SIZE): entry [q, t] is the next state after
    token t from state q, or -1 where undefined (only letter columns 1..18 are ever defined).
    """

    transitions: np.ndarray
    start: int = 0

    def __post_init__(self) -> None:
        self.transitions = np.asarray(self.transitions, dtype=np.int64)
        assert self.transitions.ndim == 2 and self.transitions.shape[1] == VOCAB_SIZE

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    def step(self, state: int, letter: int) -> int:
        """Next state after ``letter`` from ``state``, or -1 if the transition is undefined."""
        return int(self.transitions[state, letter])

    def valid_next(self, state: int) -> np.ndarray:
        """Sorted letter ids with a transition out of ``state``; shape (k,)."""
        return np.flatnonzero(self.transitions[state] >= 0)

    def accepts(self, letters: Sequence[int]) -> bool:
        """Whether ``letters`` (no separators) is a walk from the start state."""
        state = self.start
        for letter in letters:
            state = self.step(state, letter)
            if state < 0:
                return False
        return True

    def edges(self) -> list[list[int]]:
        """All transitions as [state, letter_id, next_state] triples, sorted."""
        states, letters = np.nonzero(self.transitions >= 0)
        return [[int(q), int(a), int(self.transitions[q, a])] for q, a in zip(states, letters)]

    def to_json(self) -> dict:
        """JSON-ready dict ``{"num_states", "start", "transitions": [[q, a, q'], ...]}``."""
        return {"num_states": self.num_states, "start": self.start, "transitions": self.edges()}

    @classmethod
    def from_json(cls, data: Mapping) -> "Automaton":
        """Inverse of :meth:`to_json`. Raises ``ValueError`` on anything :meth:`to_json` cannot write:
        ``num_states`` outside [1, MAX_STATES], a state outside [0, num_states), a letter outside the
        letter ids 1..18, a transition defined twice."""
        if not isinstance(data, Mapping):
            raise ValueError(f"automaton must be an object, got {type(data).__name__}")
        num_states, start, transitions = data.get("num_states"), data.get("start"), data.get("transitions")
        if not _is_int(num_states) or not 1 <= num_states <= MAX_STATES:
            raise ValueError(f"automaton num_states must be an integer in [1, {MAX_STATES}], got {num_states!r}")
        if not _is_int(start) or not 0 <= start < num_states:
            raise ValueError(f"automaton start must be a state in [0, {num_states}), got {start!r}")
        if not isinstance(transitions, list):
            raise ValueError(f"automaton transitions must be a list of [state, letter, state], got {transitions!r}")
        table = np.full((num_states, VOCAB_SIZE), -1, dtype=np.int64)
        for edge in transitions:
            if not (isinstance(edge, list) and len(edge) == 3 and all(_is_int(v) for v in edge)):
                raise ValueError(f"automaton transition must be [state, letter, state] integers, got {edge!r}")
            state, letter, target = edge
            if not (0 <= state < num_states and 0 <= target < num_states and LETTERS[0] <= letter <= LETTERS[-1]):
                raise ValueError(
                    f"automaton transition {edge} is out of range (states in [0, {num_states}), "
                    f"letters in [{LETTERS[0]}, {LETTERS[-1]}])"
                )
            if table[state, letter] >= 0:
                raise ValueError(f"automaton transition from state {state} on letter {letter} is defined twice")
            table[state, letter] = target
        return cls(table, start)

    def canonical_key(self) -> bytes:
        """Key identifying the language: the canonical minimal automaton's transition table."""
        return minimise(self).transitions.astype(np.int8).tobytes()


def _canonical(automaton: Automaton) -> Automaton:
    """Renumber states in BFS order from the start (letters ascending); drop unreachable ones."""
    table = automaton.transitions
    order = {automaton.start: 0}
    queue = deque([automaton.start])
    while queue:
        state = queue.popleft()
        for target in table[state][table[state] >= 0]:
            if int(target) not in order:
                order[int(target)] = len(order)
                queue.append(int(target))
    old = np.array(sorted(order, key=order.get))
    renumber = np.full(automaton.num_states + 1, -1, dtype=np.int64)
    renumber[old] = np.arange(len(old))
    return Automaton(renumber[table[old]], 0)  # index -1 hits the trailing -1


def _equivalence_classes(table: np.ndarray) -> np.ndarray:
    """Partition refinement: equivalent iff same defined letters and equivalent successors.

    ``table`` has shape (n, VOCAB_SIZE); returns class ids of shape (n,).
    """
    classes = np.unique(table >= 0, axis=0, return_inverse=True)[1].reshape(-1)
    while True:
        successor = np.where(table >= 0, classes[table], -1)
        signature = np.column_stack([classes, successor])
        refined = np.unique(signature, axis=0, return_inverse=True)[1].reshape(-1)
        if refined.max() == classes.max():
            return refined
        classes = refined


def minimise(automaton: Automaton) -> Automaton:
    """Minimal, trimmed automaton of the same language, in canonical (BFS) numbering."""
    table = automaton.transitions
    classes = _equivalence_classes(table)
    representative = np.unique(classes, return_index=True)[1]
    merged = np.where(table >= 0, classes[table], -1)[representative]
    return _canonical(Automaton(merged, int(classes[automaton.start])))


def sample_raw_automaton(rng: np.random.Generator) -> Automaton:
    """Draw an automaton before minimisation.

    n ~ U{4..12} states, an alphabet of A ~ U{4..18} of the 18 letters; each state gets
    k ~ U{1..3} edges with k distinct letters and k distinct targets other than itself.
    """
    num_states = int(rng.integers(MIN_STATES, MAX_STATES + 1))
    size = int(rng.integers(MIN_ALPHABET, MAX_ALPHABET + 1))
    alphabet = rng.choice(LETTERS, size=size, replace=False)
    table = np.full((num_states, VOCAB_SIZE), -1, dtype=np.int64)
    for state in range(num_states):
        k = int(rng.integers(1, MAX_OUT_EDGES + 1))
        letters = rng.choice(alphabet, size=k, replace=False)
        others = np.delete(np.arange(num_states), state)
        table[state, letters] = rng.choice(others, size=k, replace=False)
    return Automaton(table, 0)


def random_automaton(rng: np.random.Generator) -> Automaton:
    """Draw a random automaton and return its minimal, trimmed, canonical form."""
    return minimise(sample_raw_automaton(rng))


def sample_walk(automaton: Automaton, length: int, rng: np.random.Generator) -> list[int]:
    """Uniform random walk of ``length`` letters from the start state."""
    uniforms = rng.random(length)
    state, letters = automaton.start, []
    for u in uniforms:
        options = automaton.valid_next(state)
        letter = int(options[int(u * len(options))])
        letters.append(letter)
        state = automaton.step(state, letter)
    return letters


def sample_prompt(automaton: Automaton, rng: np.random.Generator) -> list[int]:
    """K ~ U{10..19} walks of lengths L ~ U{1..49} joined by SEP (no trailing SEP)."""
    num_strings = int(rng.integers(MIN_STRINGS, MAX_STRINGS + 1))
    tokens: list[int] = []
    for index in range(num_strings):
        if index:
            tokens.append(SEP)
        length = int(rng.integers(MIN_STRING_LEN, MAX_STRING_LEN + 1))
        tokens.extend(sample_walk(automaton, length, rng))
    return tokens


@dataclass(eq=False)
class Environment:
    """One environment: its split, automaton and fixed prompt (token ids)."""

    split: str
    automaton: Automaton
    tokens: list[int]

    def to_json(self) -> dict:
        return {"split": self.split, "automaton": self.automaton.to_json(), "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: Mapping) -> "Environment":
        """Inverse of :meth:`to_json`. Raises ``ValueError`` on a record it could not have written: an
        unknown split, a bad automaton, tokens that are not letters and separators, or a prompt whose
        walks the automaton does not accept."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
        split, tokens = data.get("split"), data.get("tokens")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        automaton = Automaton.from_json(data.get("automaton"))
        if not isinstance(tokens, list) or len(tokens) < 2 or len(tokens) > MAX_PROMPT_TOKENS:
            raise ValueError(f"tokens must be a list of 2 to {MAX_PROMPT_TOKENS} token ids")
        if not all(_is_int(t) and LETTERS[0] <= t <= SEP for t in tokens):
            bad = next(t for t in tokens if not (_is_int(t) and LETTERS[0] <= t <= SEP))
            raise ValueError(f"tokens must be letter ids 1..18 or the separator 19, got {bad!r}")
        walks = decode(tokens).split(ALPHABET[SEP])
        for walk in walks:
            if not automaton.accepts(encode(walk)):
                raise ValueError(f"the prompt's walk {walk!r} is not accepted by the record's automaton")
        return cls(split, automaton, list(tokens))


def _draw_environments(split: str, count: int, rng: np.random.Generator, seen: set[bytes]) -> list[Environment]:
    """Draw ``count`` environments with automata new to ``seen`` (updated in place)."""
    envs: list[Environment] = []
    attempts = 0
    while len(envs) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise RuntimeError(f"could not draw {count} distinct automata for {split}")
        automaton = random_automaton(rng)
        key = automaton.canonical_key()
        if key in seen:
            continue
        seen.add(key)
        envs.append(Environment(split, automaton, sample_prompt(automaton, rng)))
    return envs


def make_splits(num_train: int, seed: int = 0, num_test: int = 500, num_val: int = 500) -> dict[str, list[Environment]]:
    """Build the splits ``{"test", "validation", "train"}`` -> list of environments.

    Test then validation environments are drawn from one stream of the seed (independent of
    ``num_train``); training environments from a second stream. Automata are distinct by
    canonical key across all splits. Each environment carries exactly one fixed prompt.
    """
    eval_seq, train_seq = np.random.SeedSequence(seed).spawn(2)
    eval_rng, train_rng = np.random.default_rng(eval_seq), np.random.default_rng(train_seq)
    seen: set[bytes] = set()
    test = _draw_environments("test", num_test, eval_rng, seen)
    validation = _draw_environments("validation", num_val, eval_rng, seen)
    train = _draw_environments("train", num_train, train_rng, seen)
    return {"test": test, "validation": validation, "train": train}


def inputs_and_labels(tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Next-token pairs: inputs = tokens[:-1], labels = tokens[1:] with SEP labels ignored.

    Both have shape (len(tokens) - 1,), dtype int64.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    labels = tokens[1:].copy()
    labels[labels == SEP] = IGNORE_INDEX
    return tokens[:-1], labels


def collate(
    batch: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of (inputs, labels) to its longest member.

    Returns LongTensors (inputs, labels) of shape (B, T_max); inputs are padded with PAD and
    labels with IGNORE_INDEX.
    """
    length = max(len(inputs) for inputs, _ in batch)
    inputs = torch.full((len(batch), length), PAD, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        inputs[row, : len(x)] = torch.as_tensor(np.asarray(x), dtype=torch.long)
        labels[row, : len(y)] = torch.as_tensor(np.asarray(y), dtype=torch.long)
    return inputs, labels


def write_jsonl(path: str | Path, splits: Mapping[str, Sequence[Environment]]) -> None:
    """Write one JSON line per environment: {"split", "automaton", "tokens"}."""
    with open(path, "w", encoding="utf-8") as handle:
        for envs in splits.values():
            for env in envs:
                handle.write(json.dumps(env.to_json()) + "\n")


def read_jsonl(path: str | Path) -> dict[str, list[Environment]]:
    """Read environments written by :func:`write_jsonl`, grouped by split in file order.

    Every problem (bytes that are not UTF-8, a line that is not JSON, a record out of range, see
    :meth:`Environment.from_json`) raises ``ValueError`` naming the file and the line."""
    splits: dict[str, list[Environment]] = {name: [] for name in SPLITS}
    number = 0
    try:
        with open(path, "rb") as handle:  # decoded line by line, so that an error names its line
            for number, raw in enumerate(handle, 1):
                line = raw.decode("utf-8")
                if line.strip():
                    env = Environment.from_json(json.loads(line))
                    splits[env.split].append(env)
    except (UnicodeDecodeError, RecursionError, ValueError) as err:  # JSONDecodeError is a ValueError
        what = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err) or type(err).__name__
        raise ValueError(f"{path}, line {number}: {what}; regenerate it with `mosaics regbench data`") from None
    return splits


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
