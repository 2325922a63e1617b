"""Throughput of cutover with shadow at 100 % (with comparison) against pass-through, same run.

    .venv/bin/python -m bench.shadow [seconds]

The simulated platforms and wrk share core 1; each cutover runs alone on core 0, one at a time,
and is driven with GET /api/contacts/1010 (a ~600-byte JSON answer; the id map translates it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench.common import (
    CUTOVER_RUN,
    PYTHON,
    Proc,
    WrkResult,
    free_port,
    import_seeded_ids,
    pinned,
    routes_yaml,
    wait_port,
    wrk,
)

PATH = "/api/contacts/1010"
HEADERS = {"X-Customer-Id": "C-1010", "X-Channel": "phone"}


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-"))
    ports = {name: free_port() for name in ("old_crm", "old_ticketing", "new_crm", "new_ticketing")}
    sims = Proc.start(
        "sims",
        pinned(
            "1",
            [
                PYTHON,
                "-m",
                "proxy.demo.platforms",
                "--ports",
                ",".join(str(p) for p in ports.values()),
            ],
        ),
        work / "sims.log",
    )
    results: dict[str, tuple[WrkResult, float | None]] = {}
    try:
        for port in ports.values():
            wait_port(port)
        direct = wrk(f"http://127.0.0.1:{ports['old_crm']}{PATH}", seconds=seconds, headers=HEADERS)
        results["upstream direct"] = (direct, None)
        for case, shadow in (("cutover pass-through", 0), ("cutover shadow 100%", 100)):
            listen = free_port()
            case_dir = work / case.replace(" ", "-").replace("%", "")
            case_dir.mkdir()
            (case_dir / "routes.yaml").write_text(
                routes_yaml(listen=listen, ports=ports, shadow=shadow)
            )
            import_seeded_ids(case_dir)
            proc = Proc.start(
                case,
                pinned(
                    "0",
                    list(CUTOVER_RUN),
                ),
                case_dir / "cutover.log",
                cwd=case_dir,
            )
            try:
                wait_port(listen)
                url = f"http://127.0.0.1:{listen}{PATH}"
                wrk(url, seconds=2, headers=HEADERS)  # warm up
                cpu0 = proc.cpu_seconds()
                result = wrk(url, seconds=seconds, headers=HEADERS)
                cpu = proc.cpu_seconds() - cpu0
                results[case] = (result, cpu / result.requests * 1000)
            finally:
                proc.stop()
            compared = sum(1 for f in (case_dir / "diffs").glob("*.jsonl") for _ in f.open())
            if shadow:
                print(f"  ({case}: {compared} comparisons written to the diff log)")
    finally:
        sims.stop()
    print("\n| case | requests/s | errors | cutover CPU s / 1000 req |\n|---|---:|---:|---:|")
    for case, (result, cpu_per_k) in results.items():
        cpu_text = "-" if cpu_per_k is None else f"{cpu_per_k:.3f}"
        print(f"| {case} | {result.requests_per_s:,.0f} | {result.errors} | {cpu_text} |")
    ratio = (
        results["cutover shadow 100%"][0].requests_per_s
        / results["cutover pass-through"][0].requests_per_s
    )
    print(f"\nshadow 100 % / pass-through = {ratio:.2f}")


if __name__ == "__main__":
    main()
