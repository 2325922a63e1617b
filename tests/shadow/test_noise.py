"""Noise: what differs between two answers of the same platform is reported apart, not hidden."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from proxy.config.spec import CompareSpec
from shadow.compare import (
    Comparison,
    Difference,
    Observation,
    compare,
    compare_docs,
    compare_repeat,
)
from shadow.noise import NoiseLearner, NoiseSet, noise_key
from shadow.rules import compile_rules

RULES = compile_rules(CompareSpec())


def observe(body: Any) -> Observation:
    raw = orjson.dumps(body)
    return Observation(200, {}, raw, hashlib.sha256(raw).hexdigest(), len(raw), "application/json")


def seen(*paths: str) -> Comparison:
    differences = tuple(Difference(path, "changed", 1, 2) for path in paths)
    return Comparison(not differences, differences, (), "json")


def test_keys_generalize_indices():
    """$.items[3].etag is counted as $.items[*].etag; special paths stay as they are."""
    assert noise_key("$.items[3].etag") == "$.items[*].etag"
    assert noise_key("@headers.date") == "@headers.date"
    assert noise_key("@contract") is None
    assert noise_key("not a path") is None


def test_a_path_learnt_once_covers_every_element_and_everything_under_it():
    """One sighting at $.items[3].etag makes $.items[7].etag noise, and $.meta covers $.meta.x."""
    learner = NoiseLearner()
    learner.learn(seen("$.items[3].etag", "$.meta"))
    noise = learner.snapshot()
    assert noise.is_noise("$.items[7].etag")
    assert noise.is_noise(("items", 0, "etag"))
    assert noise.is_noise("$.meta.generated_at")
    assert not noise.is_noise("$.items[7].id")
    assert not noise.is_noise("$.metadata")
    assert not noise.is_noise("@status")


def test_a_noisy_whole_body_covers_only_itself():
    """A non-JSON answer that varies must not turn every JSON field into noise."""
    learner = NoiseLearner()
    learner.learn(seen("$"))
    noise = learner.snapshot()
    assert noise.is_noise("$")
    assert not noise.is_noise("$.name")


def test_counts_samples_and_threshold():
    """Each path counts once per probe; min_count decides when it becomes noise."""
    learner = NoiseLearner(min_count=2)
    learner.learn(seen("$.a[0].x", "$.a[1].x", "@headers.date"))
    assert learner.snapshot().counts == {"$.a[*].x": 1, "@headers.date": 1}
    assert not learner.snapshot().is_noise("$.a[0].x")
    learner.learn(seen("$.a[5].x"))
    learner.learn(seen())
    noise = learner.snapshot()
    assert noise.samples == 3
    assert noise.is_noise("$.a[0].x")
    assert not noise.is_noise("@headers.date")
    assert noise.paths == frozenset({"$.a[*].x"})


def test_the_learner_is_bounded():
    """A platform inventing keys cannot grow the set without limit; overflow is counted."""
    learner = NoiseLearner(max_paths=2)
    learner.learn(seen("$.a", "$.b", "$.c"))
    learner.learn(seen("$.a"))
    assert len(learner.snapshot()) == 2
    assert learner.dropped == 1
    assert learner.snapshot().counts["$.a"] == 2


def test_a_snapshot_does_not_change_when_learning_goes_on():
    """Requests share a snapshot without locks; later learning makes a new one."""
    learner = NoiseLearner()
    before = learner.snapshot()
    assert learner.snapshot() is before  # cheap to ask for on every comparison
    learner.learn(seen("$.x"))
    assert not before.is_noise("$.x")
    assert learner.snapshot().is_noise("$.x")


def test_compare_reports_noise_apart_and_still_matches():
    """Noise differences move to Comparison.noise; a comparison with only noise matches."""
    noise = NoiseSet({"$.items[*].etag": 3, "@headers.date": 1}, samples=10)
    result = compare_docs(
        {"items": [{"etag": 1, "v": 1}, {"etag": 2, "v": 2}]},
        {"items": [{"etag": 9, "v": 1}, {"etag": 8, "v": 3}]},
        RULES,
        noise=noise,
    )
    assert [d.path for d in result.differences] == ["$.items[1].v"]
    assert [d.path for d in result.noise] == ["$.items[0].etag", "$.items[1].etag"]
    only_noise = compare_docs(
        {"items": [{"etag": 1}]}, {"items": [{"etag": 2}]}, RULES, noise=noise
    )
    assert only_noise.match
    assert len(only_noise.noise) == 1


def test_probe_learn_then_compare():
    """The whole loop: two answers of one platform teach what the cross-platform diff sets apart."""
    learner = NoiseLearner()
    learner.learn(
        compare_repeat(
            observe({"id": 1, "served_at": "10:00"}),
            observe({"id": 1, "served_at": "10:01"}),
            RULES,
            side="old",
        )
    )
    result = compare(
        observe({"id": 1, "served_at": "10:02"}),
        observe({"id": 2, "served_at": "10:03"}),
        RULES,
        noise=learner.snapshot(),
    )
    assert [d.path for d in result.differences] == ["$.id"]
    assert [d.path for d in result.noise] == ["$.served_at"]
