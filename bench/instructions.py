"""User-space instructions per request of one cutover process, counted by valgrind's callgrind.

    python -m bench.instructions                 # pass-through and shadow, 2 000 requests each
    python -m bench.instructions --cases shadow --requests 5000
    python -m bench.instructions --cases down    # shadow 100 % to a secondary that is down

Timings on a shared VM move by 10-30 % from run to run; an instruction count is the same on
every run of the same code (within ~0.1 %), so this is what a change to the hot path is judged
by before the timed bench confirms it. It counts what cutover's own process executes (Python,
C extensions, libc; its threads too), not the kernel: a change that saves a syscall shows in
the timed bench only. cutover runs under callgrind (~50x slower), behind the bench's fast
upstream (nginx); after a warm-up the counters are zeroed, N requests are sent over 8
keep-alive connections, and the counters are dumped.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import CUTOVER_RUN, free_port
from bench.procs import BenchError, Processes, raise_on_signals
from bench.suite import write_case_config
from bench.upstreams import PATH, ensure_nginx, start_nginx, upstream_conf

CONNECTIONS = 8
WARMUP = 400


async def _drive(port: int, requests: int) -> float:
    """`requests` GETs over CONNECTIONS keep-alive connections; the seconds it took."""
    head = (
        f"GET {PATH} HTTP/1.1\r\nHost: bench\r\nX-Customer-Id: C-1010\r\nX-Channel: phone\r\n\r\n"
    ).encode()

    async def one_connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(head)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: (\d+)", answer)
            if length is None or not answer.startswith(b"HTTP/1.1 200"):
                raise BenchError(f"unexpected answer: {answer[:200]!r}")
            await reader.readexactly(int(length.group(1)))
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection(requests // CONNECTIONS) for _ in range(CONNECTIONS)))
    return time.monotonic() - started


def _callgrind(pid: int, command: str) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def count(case: str, requests: int, work: Path, procs: Processes, old: int, new: int) -> float:
    folder = work / case
    listen, _ = write_case_config(
        folder,
        old=f"http://127.0.0.1:{old}",
        new=f"http://127.0.0.1:{free_port() if case == 'down' else new}",
        shadow=0 if case == "pass" else 100,
        dual_write=False,
    )
    out = folder / "callgrind.out"
    proc = procs.start(
        f"cutover-{case}",
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *CUTOVER_RUN],
        log=folder / "cutover.log",
        cwd=folder,
        env={"CUTOVER_ADMIN_TOKEN": secrets.token_hex(16)},
        ports=[listen],
        ready_timeout=120,
    )
    asyncio.run(_drive(listen, WARMUP))
    time.sleep(1)  # the warm-up's mirrors and diff-log lines
    _callgrind(proc.pid, "-z")
    asyncio.run(_drive(listen, requests))
    time.sleep(2)  # the last requests' mirrors and diff-log lines belong to them
    _callgrind(proc.pid, "-d")
    procs.stop(proc)
    dumps = sorted(folder.glob("callgrind.out.*.1"))
    if not dumps:
        raise BenchError(f"no callgrind dump in {folder}")
    summary = re.search(r"^summary: (\d+)", dumps[0].read_text(), re.M)
    if summary is None:
        raise BenchError(f"no summary in {dumps[0]}")
    return int(summary.group(1)) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "--cases", default="pass,shadow", help="pass, shadow, down (default: pass,shadow)"
    )
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("bench.instructions needs valgrind (Debian package valgrind)")
    raise_on_signals()
    work = Path(tempfile.mkdtemp(prefix="cutover-instructions-"))
    work.chmod(0o755)
    procs = Processes()
    try:
        old, new = free_port(), free_port()
        start_nginx(
            procs,
            ensure_nginx(),
            work,
            "upstream",
            upstream_conf(work, old, new, "11"),
            "0-1",
            [old, new],
        )
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            per_request = count(case, args.requests, work, procs, old, new)
            print(f"{case}: {per_request / 1000:,.1f} k instructions per request")
    except BenchError as exc:
        print(f"bench: {exc}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
