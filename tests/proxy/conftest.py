"""Tests of the data path's HTTP layer run on both event loops: cutover runs on uvloop, whose
transports differ from asyncio's in the details that matter there (what a write after a reset
does, when a lost connection is reported)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

BOTH: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
DEFAULT: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return BOTH if item.path.name.startswith("test_http1_") else DEFAULT
