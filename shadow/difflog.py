"""The diff log writer: one JSON line per compared exchange, written off the event loop.

The proxy calls `submit(record)` from the event loop; it serialises the record with orjson,
appends the line to a bounded queue and never waits for the disk. A dedicated thread takes what
is queued and writes it in batches, so a slow or full disk costs the proxy nothing but the
records it had to drop; the thread runs almost no Python, so it barely holds the GIL the event
loop needs. Failures are counted and logged (rate-limited), never raised: the diff log is
evidence for QA, not part of serving a request.

Files (several processes may share one directory, each with its own instance id):

    diffs-<instance>.jsonl                          the active file, appended to
    diffs-<instance>-<yyyymmddThhmmss.ffffff>.jsonl a rotated file (UTC time of rotation)

The active file is rotated before a write would take it past `max_size`; only the newest `keep`
rotated files of the instance are kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

__all__ = [
    "ACTIVE_PATTERN",
    "DEFAULT_FLUSH_INTERVAL",
    "ROTATED_PATTERN",
    "DiffLogWriter",
    "active_name",
    "rotated_name",
]

DEFAULT_FLUSH_INTERVAL: Final = 0.5
"""Queued records reach the file at most this long after they were submitted."""

_BATCH_RECORDS: Final = 1000
_BATCH_BYTES: Final = 1 << 20
_DUMPS_OPTIONS: Final = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_LOG_EVERY: Final = 10.0  # seconds between two log lines about the same kind of failure
_STAMP_FORMAT: Final = "%Y%m%dT%H%M%S.%f"

ROTATED_PATTERN: Final = re.compile(r"diffs-(?P<instance>.+)-(?P<stamp>\d{8}T\d{6}\.\d{6})\.jsonl")
ACTIVE_PATTERN: Final = re.compile(r"diffs-(?P<instance>.+)\.jsonl")
_INSTANCE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def active_name(instance: str) -> str:
    return f"diffs-{instance}.jsonl"


def rotated_name(instance: str, at: datetime) -> str:
    return f"diffs-{instance}-{at.astimezone(UTC).strftime(_STAMP_FORMAT)}.jsonl"


def _errno_name(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return errno.errorcode.get(code, str(code))
    return type(exc).__name__


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _default(value: Any) -> Any:
    """What orjson cannot serialise by itself (sets, Paths, enums...) is written as text."""
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class _RateLimitedLog:
    """At most one line per event name every `_LOG_EVERY` seconds, with a count of the rest."""

    __slots__ = ("_last", "_log", "_suppressed")

    def __init__(self) -> None:
        self._log = structlog.get_logger("cutover.difflog")
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < _LOG_EVERY:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        with contextlib.suppress(Exception):  # a broken log sink must not stop the writer
            self._log.warning(event, suppressed=suppressed, **fields)


class DiffLogWriter:
    """Bounded queue in front of one writer thread that owns the instance's files.

    Counters (`written`, `dropped`, `errors`, `rotations`, `queued`) may be read from any thread.
    `dropped` counts every record that will never reach a file: refused by `submit` (queue full,
    writer closed), lost with a batch whose write failed, left over when `close` timed out, or
    not serialisable.
    """

    def __init__(
        self,
        directory: Path,
        *,
        instance: str,
        max_size: int,
        keep: int,
        queue_size: int = 10_000,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        if not _INSTANCE.fullmatch(instance):
            raise ValueError(
                f"instance id {instance!r}: use 1-100 letters, digits, '_', '.' or '-'"
            )
        if max_size < 1 or keep < 0 or queue_size < 1 or flush_interval <= 0:
            raise ValueError("max_size, queue_size and flush_interval must be positive, keep >= 0")
        self.directory = Path(directory)
        self.instance = instance
        self.max_size = max_size
        self.keep = keep
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.active_path = self.directory / active_name(instance)

        self._lock = threading.Lock()
        # submit takes the lock itself: Condition's __enter__/__exit__ are Python-level calls
        self._cond = threading.Condition(self._lock)
        self._queue: deque[bytes] = deque()  # serialised records, one line each
        self._accepted = 0  # records put in the queue, ever (under _cond)
        self._done = 0  # records taken from the queue and finished with (under _cond)
        self._flush_wanted = False
        self._closing = False
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None

        self._refused = 0  # by submit (under _cond)
        self._lost = 0  # by the writer thread, only it writes this
        self._written = 0
        self._errors = 0
        self._rotations = 0

        # writer thread state
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._size = 0
        self._last_stamp: datetime | None = None
        self._log = _RateLimitedLog()
        # test seam: called by the writer thread before each batch is written
        self._before_write: Callable[[], None] | None = None

    # --- counters ------------------------------------------------------------------------------

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._refused + self._lost

    @property
    def errors(self) -> int:
        return self._errors

    @property
    def rotations(self) -> int:
        return self._rotations

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    # --- the caller's side ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread; records submitted before are kept and written."""
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"cutover-difflog-{self.instance}", daemon=True
            )
        self._thread.start()

    def submit(self, record: Mapping[str, Any]) -> bool:
        """Queue one record without waiting; False (and counted as dropped) when it cannot be.

        The record is serialised here, in the caller's thread (a few microseconds), so that the
        writer thread only joins and writes bytes: serialising a whole batch there held the GIL
        for up to a few milliseconds, which the event loop then waited for (bench/README.md).
        """
        try:
            line = orjson.dumps(record, default=_default, option=_DUMPS_OPTIONS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            with self._lock:
                self._refused += 1
            self._log.warning("diff_log_record_dropped", reason=str(exc))
            return False
        with self._lock:
            if self._closing or len(self._queue) >= self.queue_size:
                self._refused += 1
                return False
            self._queue.append(line)
            self._accepted += 1
            if len(self._queue) == _BATCH_RECORDS:
                self._cond.notify_all()  # a full batch is ready: no need to wait for the timer
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            if self._done < target:
                self._flush_wanted = True
                self._cond.notify_all()
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return self._done >= target
                self._cond.wait(left)
            return True

    def close(self, timeout: float) -> bool:
        """Refuse new records, write what is queued within `timeout`, stop the thread.

        True when the thread finished in time (whatever it could not write is in `dropped`);
        False when it is still stuck, e.g. in a write to a hung file system.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()
            thread = self._thread
        if thread is None:  # never started: nothing will write what was queued
            with self._cond:
                left = len(self._queue)
                self._queue.clear()
                self._done += left
            self._lost += left
            return True
        thread.join(max(0.0, deadline - time.monotonic()) + 0.2)
        return not thread.is_alive()

    # --- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                written_before = self._written
                try:
                    self._write_batch(batch)
                except Exception as exc:  # a bug must cost this batch, not the thread
                    self._errors += 1
                    self._lost += max(0, len(batch) - (self._written - written_before))
                    self._close_file()
                    self._log.warning("diff_log_write_failed", errno=_errno_name(exc))
                finally:
                    with self._cond:
                        self._done += len(batch)
                        self._cond.notify_all()
        except BaseException as exc:  # pragma: no cover - last resort: the thread must not die loud
            self._errors += 1
            self._log.warning("diff_log_writer_crashed", error=repr(exc))
        finally:
            self._close_file()
            with self._cond:
                left = len(self._queue)
                self._queue.clear()
                self._done += left
                self._cond.notify_all()
            self._lost += left

    def _next_batch(self) -> list[bytes] | None:
        """Wait for records (up to the flush interval), take a batch; None when closed and done."""
        with self._cond:
            waited_since = time.monotonic()
            while True:
                if self._closing:
                    if not self._queue:
                        return None
                    if self._deadline is not None and time.monotonic() > self._deadline:
                        return None  # out of time: _run counts what is left as dropped
                    break
                if self._flush_wanted and self._queue:
                    break
                if len(self._queue) >= _BATCH_RECORDS:
                    break
                left = self.flush_interval - (time.monotonic() - waited_since)
                if left <= 0:
                    if self._queue:
                        break
                    waited_since = time.monotonic()
                    left = self.flush_interval
                self._cond.wait(left)
            count = min(len(self._queue), _BATCH_RECORDS)
            batch = [self._queue.popleft() for _ in range(count)]
            if not self._queue:
                self._flush_wanted = False
            return batch

    def _write_batch(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._before_write is not None:
            self._before_write()
        written_before = self._written
        pending: list[bytes] = []
        pending_size = 0
        try:
            self._ensure_open()
            for line in lines:
                over = self._size + pending_size + len(line) > self.max_size
                if (over and self._size + pending_size > 0) or pending_size >= _BATCH_BYTES:
                    self._write(pending)
                    pending, pending_size = [], 0
                    if over:
                        self._rotate()
                pending.append(line)
                pending_size += len(line)
            self._write(pending)
        except OSError as exc:
            self._fail(exc, len(lines) - (self._written - written_before))

    def _fail(self, exc: OSError, lost: int) -> None:
        self._errors += 1
        self._lost += lost
        self._close_file()
        self._log.warning(
            "diff_log_write_failed",
            errno=_errno_name(exc),
            path=str(exc.filename or self.active_path),
            dropped_records=lost,
        )

    def _write(self, lines: list[bytes]) -> None:
        """Write whole lines; on a failure part-way, count the lines that made it and re-raise."""
        if not lines:
            return
        assert self._fd is not None
        data = memoryview(b"".join(lines))
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        finally:
            self._size += done
            end = 0
            for line in lines:
                end += len(line)
                if end > done:
                    break
                self._written += 1

    def _ensure_open(self) -> None:
        if self._fd is not None:
            try:
                now = os.stat(self.active_path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != self._ino:
                # removed or replaced underneath us: writing on would go nowhere anyone reads
                self._close_file()
                self._log.warning("diff_log_reopened", path=str(self.active_path))
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.active_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            info = os.fstat(fd)
            size = info.st_size
            if size > 0 and stat.S_ISREG(info.st_mode) and _last_byte(self.active_path) != b"\n":
                # a line cut short by an earlier failure: end it so the next record stands alone
                os.write(fd, b"\n")
                size += 1
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._ino = (info.st_dev, info.st_ino)
        self._size = size

    def _close_file(self) -> None:
        fd, self._fd, self._ino = self._fd, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stamp(self) -> datetime:
        """The rotation time, strictly after the previous one so names never collide."""
        now = datetime.now(UTC)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return now

    def _rotate(self) -> None:
        self._close_file()
        while True:
            target = self.directory / rotated_name(self.instance, self._stamp())
            if not target.exists():
                break
        os.rename(self.active_path, target)
        self._rotations += 1
        self._prune()
        self._ensure_open()

    def _prune(self) -> None:
        """Delete this instance's rotated files beyond the newest `keep`."""
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.directory)
                if (match := ROTATED_PATTERN.fullmatch(entry.name))
                and match.group("instance") == self.instance
            )
        except OSError as exc:
            self._errors += 1
            self._log.warning("diff_log_prune_failed", errno=_errno_name(exc))
            return
        for name in names[: max(0, len(names) - self.keep)]:
            try:
                os.unlink(self.directory / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._errors += 1
                self._log.warning("diff_log_prune_failed", errno=_errno_name(exc), file=name)
