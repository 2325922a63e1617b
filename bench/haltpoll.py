"""The guest's halt polling: how long an idle vCPU spins before it halts.

On a KVM guest with the `haltpoll` cpuidle driver, an idle vCPU halts at once when
`guest_halt_poll_ns` is 0, and the next wake-up then goes through the host: on the Intel host of
2026-12-07 (kernel command line `haltpoll.guest_halt_poll_ns=0`) nginx saturated at 28,900
requests/s and cutover-pass at 7,900, against 56,500 and 10,600 with 200 µs of polling, and a
cutover request at 1 000/s cost 350 µs of CPU (126 µs at saturation). Every process on the two
cores pays it, but not alike, and it decides the latency figures, so the report says what the
run had, and `--halt-poll-us` sets it for the run (root) and puts the machine's values back
after (not after a SIGKILL of the bench).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.procs import BenchError

PARAMETERS = Path("/sys/module/haltpoll/parameters")
POLL_NS = "guest_halt_poll_ns"
SHRINK = "guest_halt_poll_allow_shrink"  # Y: the poll window shrinks after long idle spells


def describe(root: Path = PARAMETERS) -> str:
    """One line for the report: the machine's halt polling as the run had it."""
    try:
        ns = int((root / POLL_NS).read_text())
        shrink = (root / SHRINK).read_text().strip()
    except (OSError, ValueError):
        return "no guest halt polling (no haltpoll driver)"
    if ns == 0:
        return "guest halt polling off (haltpoll guest_halt_poll_ns=0)"
    adaptive = ", adaptive" if shrink == "Y" else ", fixed"
    return f"guest halt polling up to {ns / 1000:g} µs{adaptive}"


@contextlib.contextmanager
def halt_polling(us: int | None, root: Path = PARAMETERS) -> Iterator[None]:
    """Poll up to `us` microseconds, fixed (no shrinking), for the duration; None: as it is."""
    if us is None:
        yield
        return
    try:
        before = {name: (root / name).read_text().strip() for name in (POLL_NS, SHRINK)}
        (root / SHRINK).write_text("N")
        (root / POLL_NS).write_text(str(us * 1000))
    except OSError as exc:
        raise BenchError(
            f"--halt-poll-us needs the haltpoll driver's parameters in {root}, writable (root): "
            f"{exc}"
        ) from None
    try:
        yield
    finally:
        for name in (POLL_NS, SHRINK):  # the window first, then whether it may shrink
            with contextlib.suppress(OSError):
                (root / name).write_text(before[name])
