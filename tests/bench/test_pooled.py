"""The bench's pooled percentiles: the latency targets are decided by them, so they must rank
exactly as wrk ranks one run (a run's pooled p99 is wrk's own p99)."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from bench.load import parse_histogram, percentile_ms, pooled

latencies = st.lists(st.integers(min_value=1, max_value=5_000_000), min_size=1, max_size=400)
quantiles = st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0])


def wrk_rank(values: list[int], q: float) -> int:
    """wrk's stats_percentile: the first value whose running count reaches round(q/100 n + .5)."""
    rank = math.floor(q / 100 * len(values) + 0.5 + 0.5)
    return sorted(values)[min(len(values), max(1, rank)) - 1]


@given(latencies, quantiles)
def test_a_histogram_ranks_as_wrk_ranks_the_requests(values: list[int], q: float) -> None:
    assert percentile_ms(Counter(values), q) == wrk_rank(values, q) / 1000


@given(latencies, latencies, quantiles)
def test_pooled_runs_rank_as_one_run_of_all_their_requests(
    a: list[int], b: list[int], q: float
) -> None:
    assert percentile_ms(pooled([Counter(a), Counter(b)]), q) == wrk_rank(a + b, q) / 1000


def test_done_prints_pairs_that_parse_back() -> None:
    assert parse_histogram("80:3 95:1 80:2") == {80: 5, 95: 1}
    assert parse_histogram("") == {}
    assert percentile_ms({}, 99) is None
