"""Selection strategies: turn unit scores into the sorted 0-based indices to remove.

- ``contiguous``: the best block of n consecutive units (a metric's own block scores when it has them, else
  the sum of per-unit scores over the window);
- ``topk``: the n least important units, independently;
- ``greedy``: remove the least important unit, rescore the model without it, repeat n times.

``--protect first,last,3`` excludes units from every strategy. All functions take plain lists so that they
can be tested without a model.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from hf_layerprune.runtime.errors import ConfigError, StageError

STRATEGIES = ("contiguous", "topk", "greedy")
Score = float | None
ScoreStep = Callable[[list[int], list[int]], Sequence[Score]]


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown --selection {name!r}; use one of {', '.join(STRATEGIES)}")
    return name


def parse_protect(items: Iterable[str | int] | str | None, num_units: int) -> set[int]:
    """`first`, `last` and 0-based indices (strings or ints) -> a set of unit indices."""
    if items is None:
        return set()
    if isinstance(items, str):
        items = [s for s in items.split(",")]
    out: set[int] = set()
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        if text == "first":
            out.add(0)
        elif text == "last":
            out.add(num_units - 1)
        else:
            try:
                index = int(text)
            except ValueError:
                raise ConfigError(f"cannot read --protect {item!r}: use first, last or 0-based indices") from None
            if not 0 <= index < num_units:
                raise ConfigError(f"--protect {index} is out of range: the model has units 0..{num_units - 1}")
            out.add(index)
    return out


def _key(score: Score, higher_is_more_important: bool) -> float:
    """Sort key: smallest = least important; unscored units go last."""
    if score is None:
        return float("inf")
    return score if higher_is_more_important else -score


def _check_count(n: int, available: int) -> None:
    if n < 1:
        raise ConfigError(f"--drop must be at least 1 (got {n})")
    if n > available:
        raise ConfigError(f"cannot remove {n} units: only {available} are not protected")


def ranking(scores: Sequence[Score], higher_is_more_important: bool) -> list[int]:
    """All units, least important first (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda u: (_key(scores[u], higher_is_more_important), u))


def topk(scores: Sequence[Score], n: int, *, higher_is_more_important: bool, protected: Iterable[int] = ()) -> list[int]:
    protected = set(protected)
    order = [u for u in ranking(scores, higher_is_more_important) if u not in protected and scores[u] is not None]
    _check_count(n, len(order))
    return sorted(order[:n])


def window_scores(scores: Sequence[Score], n: int) -> list[Score]:
    """Score of each window of n consecutive units: the sum of its units' scores (None if any is None)."""
    out: list[Score] = []
    for start in range(len(scores) - n + 1):
        window = scores[start : start + n]
        out.append(None if any(s is None for s in window) else float(sum(window)))  # type: ignore[arg-type]
    return out


def contiguous(
    block_scores: Sequence[Score], n: int, *, higher_is_more_important: bool, protected: Iterable[int] = ()
) -> list[int]:
    """`block_scores[s]` scores the block s..s+n-1; return the best block that avoids protected units."""
    return contiguous_positions(block_scores, n, 1, higher_is_more_important=higher_is_more_important,
                                protected=protected)[0]


def contiguous_positions(
    block_scores: Sequence[Score], n: int, k: int, *, higher_is_more_important: bool, protected: Iterable[int] = ()
) -> list[list[int]]:
    """The `k` best blocks of `n` consecutive units that avoid protected units, best first."""
    protected = set(protected)
    starts = [
        s for s in range(len(block_scores))
        if block_scores[s] is not None and not protected.intersection(range(s, s + n))
    ]
    if n < 1:
        raise ConfigError(f"--drop must be at least 1 (got {n})")
    if not starts:
        raise ConfigError(f"no block of {n} consecutive units avoids the protected units {sorted(protected)}")
    best = sorted(starts, key=lambda s: (_key(block_scores[s], higher_is_more_important), s))[:k]
    return [list(range(s, s + n)) for s in best]


def greedy(
    score_step: ScoreStep,
    n: int,
    num_units: int,
    *,
    higher_is_more_important: bool,
    protected: Iterable[int] = (),
) -> tuple[list[int], list[list[Score]]]:
    """Remove one unit at a time. ``score_step(removed, candidates)`` scores the model with `removed` skipped.

    Returns (units in removal order, the scores seen at each step)."""
    protected = set(protected)
    _check_count(n, num_units - len(protected))
    removed: list[int] = []
    steps: list[list[Score]] = []
    for _ in range(n):
        candidates = [u for u in range(num_units) if u not in protected and u not in removed]
        scores = list(score_step(list(removed), candidates))
        scored = [u for u in candidates if scores[u] is not None]
        if not scored:
            raise StageError("the metric scored none of the remaining units")
        removed.append(min(scored, key=lambda u: (_key(scores[u], higher_is_more_important), u)))
        steps.append(scores)
    return removed, steps


def config_rule_layers(rule: str, num_layers: int, n: int) -> list[int]:
    """Selections that need only the depth: Gromov's `last` (deepest before the final layer), `reverse`."""
    if rule == "last":
        return list(range(num_layers - 1 - n, num_layers - 1))
    if rule == "reverse":
        return list(range(num_layers - n, num_layers))
    raise ConfigError(f"{rule!r} is not a config-only rule")
