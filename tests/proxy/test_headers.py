"""Hop-by-hop names a Connection header lists (proxy.headers.connection_named)."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.headers import connection_named


def test_connection_lists_names_in_lower_case_and_repeats_give_the_same_answer():
    headers = CIMultiDict({"Connection": " Keep-Alive, X-Trace ,, x-hop"})
    first = connection_named(headers)
    assert first == {"keep-alive", "x-trace", "x-hop"}
    assert connection_named(headers) == first
    assert connection_named(CIMultiDict()) == frozenset()
    assert connection_named(CIMultiDict({"Connection": ""})) == frozenset()


def test_many_distinct_values_are_each_read_right():
    """Values are remembered only up to a bound; past it each is still parsed."""
    for n in range(200):
        named = connection_named(CIMultiDict({"Connection": f"close, X-Hop-{n}"}))
        assert named == {"close", f"x-hop-{n}"}
