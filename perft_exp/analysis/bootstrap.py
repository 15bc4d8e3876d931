"""95 % bootstrap intervals of accuracy and skill over questions and seeds, and of the difference between
two configs (paired).

A config run with S seeds has, per test set and seed, one 0/1 `correct` per question (its
`eval/<set>.jsonl`) and one 0/1 `majority_hit` per question (would the set's majority label be right).
Each resample draws S seeds with replacement and the test set's n questions with replacement; accuracy
is the mean of `correct`, skill the mean of `correct - majority_hit` (the constant answer is scored on
the same resampled questions), both averaged over the drawn seeds. The seeds answered the same
questions, so one question draw serves every seed: a hard question stays hard for all of them, and
three seeds that answer alike are no more certain than one. (Seeds whose records do not line up, e.g.
other test sizes, get their own question draws.) The average over test sets uses the same seed draw
for every set. With one seed only the questions vary.

Drawing n questions with replacement only matters through how many questions of each kind it picks
(a kind: the outcomes of every seed and of the majority label on that question), so each draw is one
multinomial sample over at most 2^(S+1) kinds: cheap even for 10k questions.

Two configs run with the same seeds on the same questions are compared by `paired_difference`: each
resample draws the seeds and the questions once and scores both configs on that draw, so the interval is
that of the difference itself, tighter than asking whether the two configs' own intervals overlap.

    arrays = [{"boolq": SetArrays(correct, majority_hit), ...} for each seed]
    # {"accuracy": {"boolq": (lo, hi), ..., "average": (lo, hi)}, "skill": {...}}:
    ci = bootstrap_intervals(arrays)
    d = paired_difference(arrays_a, arrays_b)   # PairedDifference(difference, lo, hi), or None if not paired
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
RNG_SEED = 0  # fixed: the same records give the same intervals
LEVEL = 0.95


@dataclass(frozen=True)
class SetArrays:
    """One seed's per-question outcomes on one test set."""

    correct: np.ndarray  # bool (n,): the model's answer is right
    majority_hit: np.ndarray  # bool (n,): the set's most common gold label is this question's label

    @classmethod
    def from_rows(cls, rows: list[dict], majority_hit: list[bool]) -> SetArrays:
        """From one set's per-question records (their `correct`) and its majority-label hits."""
        return cls(np.array([bool(r["correct"]) for r in rows]), np.array(majority_hit, dtype=bool))


def _shared_questions(seeds: list[SetArrays]) -> bool:
    first = seeds[0]
    return all(
        len(s.correct) == len(first.correct) and np.array_equal(s.majority_hit, first.majority_hit)
        for s in seeds
    )


def _kind_draws(
    table: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(kinds (K, columns), counts per resample (B, K)) of n rows of `table` drawn with replacement."""
    kinds, counts = np.unique(table, axis=0, return_counts=True)
    n = len(table)
    return kinds.astype(float), rng.multinomial(n, counts / n, size=n_resamples).astype(float)


def _per_seed(
    seeds: list[SetArrays], n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, skill), each (B, S): every seed scored on resampled questions
    (shared where they line up)."""
    if _shared_questions(seeds):
        table = np.column_stack([s.correct for s in seeds] + [seeds[0].majority_hit])
        kinds, draws = _kind_draws(table, n_resamples, rng)
        n = len(table)
        acc = draws @ kinds[:, :-1] / n
        return acc, acc - (draws @ kinds[:, -1] / n)[:, None]
    acc, skill = np.zeros((n_resamples, len(seeds))), np.zeros((n_resamples, len(seeds)))
    for j, arrays in enumerate(seeds):
        kinds, draws = _kind_draws(np.column_stack([arrays.correct, arrays.majority_hit]), n_resamples, rng)
        n = len(arrays.correct)
        acc[:, j], skill[:, j] = draws @ kinds[:, 0] / n, draws @ (kinds[:, 0] - kinds[:, 1]) / n
    return acc, skill


def _resample_set(
    seeds: list[SetArrays], picks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, skill) per resample, (B,) each: the drawn seeds' mean on the resampled questions."""
    acc, skill = _per_seed(seeds, len(picks), rng)
    return np.take_along_axis(acc, picks, 1).mean(axis=1), np.take_along_axis(skill, picks, 1).mean(axis=1)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_intervals(
    seeds: list[dict[str, SetArrays]],
    n_resamples: int = N_RESAMPLES,
    rng_seed: int = RNG_SEED,
    level: float = LEVEL,
) -> dict[str, dict[str, tuple[float, float]]]:
    """{"accuracy" | "skill": {set: (lo, hi), "average": (lo, hi)}} over the sets every seed has.

    `seeds`: one {set: SetArrays} per seed of one config. Deterministic for a given `rng_seed`.
    """
    if not seeds:
        return {"accuracy": {}, "skill": {}}
    sets = [name for name in seeds[0] if all(name in s and len(s[name].correct) for s in seeds)]
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, len(seeds), size=(n_resamples, len(seeds)))
    out: dict[str, dict[str, tuple[float, float]]] = {"accuracy": {}, "skill": {}}
    draws: dict[str, list[np.ndarray]] = {"accuracy": [], "skill": []}
    for name in sets:
        acc, skill = _resample_set([s[name] for s in seeds], picks, rng)
        for key, values in (("accuracy", acc), ("skill", skill)):
            out[key][name] = _interval(values, level)
            draws[key].append(values)
    if sets:
        for key in out:
            out[key]["average"] = _interval(np.mean(draws[key], axis=0), level)
    return out


@dataclass(frozen=True)
class PairedDifference:
    """A - B in average skill over test sets (fractions), with its paired bootstrap interval."""

    difference: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below 0."""
        return self.lo > 0 or self.hi < 0


def _paired(a: list[SetArrays], b: list[SetArrays]) -> bool:
    """Both configs' seeds answered the same questions: same sizes and the same majority-label outcomes."""
    first = a[0]
    return all(
        len(s.correct) == len(first.correct) and np.array_equal(s.majority_hit, first.majority_hit)
        for s in a + b
    )


def paired_difference(
    a: list[dict[str, SetArrays]],
    b: list[dict[str, SetArrays]],
    n_resamples: int = N_RESAMPLES,
    rng_seed: int = RNG_SEED,
    level: float = LEVEL,
) -> PairedDifference | None:
    """The difference in average skill between two configs run with the same seeds on the same questions.

    `a[j]` and `b[j]` are the records of seed j of each config ({set: SetArrays}). Each resample draws the S
    seeds with replacement, and per test set the n questions with replacement, once for both configs, so
    what the two share (a hard question, a lucky seed) cancels in the difference. Both are scored against
    the same majority label, so the difference in skill is the difference in accuracy. None when the two
    cannot be paired: other seed counts, other test sets, or records that do not line up.
    """
    if not a or len(a) != len(b):
        return None
    sets = [name for name in a[0] if all(name in s and len(s[name].correct) for s in a + b)]
    if not sets or any(set(s) != set(a[0]) for s in a + b):
        return None
    if not all(_paired([s[name] for s in a], [s[name] for s in b]) for name in sets):
        return None
    n_seeds = len(a)
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    observed, draws = [], []
    for name in sets:
        table = np.column_stack([s[name].correct for s in a] + [s[name].correct for s in b])  # (n, 2S)
        observed.append(float(np.mean(table[:, :n_seeds]) - np.mean(table[:, n_seeds:])))
        kinds, counts = _kind_draws(table, n_resamples, rng)
        # (B, 2S): every seed of both configs scored on the same resampled questions
        acc = counts @ kinds / len(table)
        diff = acc[:, :n_seeds] - acc[:, n_seeds:]  # (B, S)
        draws.append(np.take_along_axis(diff, picks, 1).mean(axis=1))
    lo, hi = _interval(np.mean(draws, axis=0), level)
    return PairedDifference(float(np.mean(observed)), lo, hi)
