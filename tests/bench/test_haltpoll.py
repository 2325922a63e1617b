"""The bench's halt-polling switch writes a kernel tunable: it must put the machine's values back
whatever happens, and say clearly when it cannot set them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.haltpoll import POLL_NS, SHRINK, describe, halt_polling
from bench.procs import BenchError


def parameters(tmp_path: Path, ns: str = "0", shrink: str = "Y") -> Path:
    (tmp_path / POLL_NS).write_text(ns + "\n")
    (tmp_path / SHRINK).write_text(shrink + "\n")
    return tmp_path


def test_the_window_is_fixed_for_the_run_and_the_machines_values_come_back(
    tmp_path: Path,
) -> None:
    root = parameters(tmp_path)
    with halt_polling(200, root):
        assert (root / POLL_NS).read_text() == "200000"
        assert (root / SHRINK).read_text() == "N"
        assert describe(root) == "guest halt polling up to 200 µs, fixed"
    assert (root / POLL_NS).read_text() == "0"
    assert (root / SHRINK).read_text() == "Y"
    assert describe(root) == "guest halt polling off (haltpoll guest_halt_poll_ns=0)"


def test_an_error_in_the_run_still_puts_them_back(tmp_path: Path) -> None:
    root = parameters(tmp_path, ns="50000")
    with pytest.raises(KeyboardInterrupt), halt_polling(100, root):
        raise KeyboardInterrupt
    assert (root / POLL_NS).read_text() == "50000"
    assert describe(root) == "guest halt polling up to 50 µs, adaptive"


def test_no_option_touches_nothing_and_a_missing_driver_is_a_clear_error(tmp_path: Path) -> None:
    with halt_polling(None, tmp_path / "absent"):
        pass
    with pytest.raises(BenchError, match="haltpoll"), halt_polling(200, tmp_path / "absent"):
        pass
    assert describe(tmp_path / "absent") == "no guest halt polling (no haltpoll driver)"
