"""Noise: fields that differ between two answers of the SAME platform (Diffy's idea).

A share of reads (`compare.noise_probe_percent`) is sent twice to the primary; the two answers
are compared (`shadow.compare.compare_repeat`) and a `NoiseLearner` counts the paths that
differed. Paths are generalized (`$.items[3].etag` -> `$.items[*].etag`), so one sighting covers
every element. `compare` then moves differences at those paths into `Comparison.noise`: noise is
reported apart, never dropped, so QA can still see it.

The learner is a plain object owned by whoever owns the route's state; `snapshot()` gives an
immutable `NoiseSet` that requests can share without locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from shadow import jsonpath
from shadow.jsonpath import ConcretePath, Path, PathError

if TYPE_CHECKING:
    from shadow.compare import Comparison

__all__ = ["DEFAULT_MAX_PATHS", "NoiseLearner", "NoiseSet", "noise_key"]

DEFAULT_MAX_PATHS = 1000
"""A platform that invents keys (ids as object keys) must not grow the set without bound."""

_NOT_NOISE = frozenset({"@contract"})  # a translation failure is a bug to see, not noise


def noise_key(path: str) -> str | None:
    """The generalized text under which a difference path is counted; None if it is not one."""
    if path in _NOT_NOISE:
        return None
    if path.startswith("@"):
        return path
    try:
        parsed = jsonpath.parse(path)
    except PathError:
        return None
    return jsonpath.format_path(jsonpath.generalize(parsed))


class NoiseSet:
    """An immutable view of learnt noise: which paths, and how often each was seen differing.

    A path is noise when it, or a place above it, differed at least `min_count` times. The
    whole body (`$`) covers only itself: one noisy non-JSON answer must not hide every field.
    """

    __slots__ = ("_counts", "_json", "_special", "min_count", "samples")

    def __init__(self, counts: Mapping[str, int], samples: int = 0, min_count: int = 1) -> None:
        self._counts: Mapping[str, int] = MappingProxyType(dict(counts))
        self.samples = samples
        self.min_count = max(1, min_count)
        json_paths: set[Path] = set()
        special: set[str] = set()
        for text, count in counts.items():
            if count < self.min_count:
                continue
            if text.startswith("@"):
                special.add(text)
                continue
            try:
                json_paths.add(jsonpath.generalize(jsonpath.parse(text)))
            except PathError:
                continue
        self._json = frozenset(json_paths)
        self._special = frozenset(special)

    @property
    def counts(self) -> Mapping[str, int]:
        """Generalized path -> number of probes in which it differed."""
        return self._counts

    @property
    def paths(self) -> frozenset[str]:
        """The generalized paths that count as noise."""
        return frozenset(text for text, n in self._counts.items() if n >= self.min_count)

    def __len__(self) -> int:
        return len(self._json) + len(self._special)

    def __repr__(self) -> str:
        return f"NoiseSet({sorted(self.paths)!r}, samples={self.samples})"

    def is_noise(self, path: str | ConcretePath) -> bool:
        """True when a difference at `path` (concrete, text or tuple) is known noise."""
        if isinstance(path, str):
            if path.startswith("@"):
                return path in self._special
            try:
                parsed: Path = jsonpath.parse(path)
            except PathError:
                return False
        else:
            parsed = path
        if not self._json:
            return False
        general = jsonpath.generalize(parsed)
        if not general:
            return () in self._json
        return any(general[:end] in self._json for end in range(1, len(general) + 1))


class NoiseLearner:
    """Counts the paths that differ between repeated answers of one platform."""

    __slots__ = ("_counts", "_dropped", "_samples", "_snapshot", "max_paths", "min_count")

    def __init__(self, *, min_count: int = 1, max_paths: int = DEFAULT_MAX_PATHS) -> None:
        self.min_count = min_count
        self.max_paths = max_paths
        self._counts: dict[str, int] = {}
        self._samples = 0
        self._dropped = 0
        self._snapshot: NoiseSet | None = None

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def dropped(self) -> int:
        """Sightings not counted because `max_paths` distinct paths were already known."""
        return self._dropped

    def learn(self, comparison: Comparison) -> None:
        """Count one probe: each differing path once, whether or not it is already noise."""
        self.learn_paths(d.path for d in (*comparison.differences, *comparison.noise))

    def learn_paths(self, paths: Iterable[str]) -> None:
        self._samples += 1
        self._snapshot = None
        seen: set[str] = set()
        for path in paths:
            key = noise_key(path)
            if key is None or key in seen:
                continue
            seen.add(key)
            if key in self._counts:
                self._counts[key] += 1
            elif len(self._counts) < self.max_paths:
                self._counts[key] = 1
            else:
                self._dropped += 1

    def snapshot(self) -> NoiseSet:
        """The current noise, immutable; the same object until something new is learnt."""
        if self._snapshot is None:
            self._snapshot = NoiseSet(self._counts, self._samples, self.min_count)
        return self._snapshot
