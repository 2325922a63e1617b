"""The `cutover` command: one subcommand per job, each in a few lines that call the library.

Exit codes: 0 done; 1 failed at run time; 2 bad input (a routes.yaml that cannot run, bad
arguments); 3 done but not everywhere (e.g. a rollback not confirmed by every instance).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence

import orjson

from proxy.config import ConfigError, load_config
from proxy.control.cli import add_commands as add_control_commands
from proxy.dualwrite.cli import add_commands as add_outbox_commands
from proxy.dualwrite.reconcile import add_command as add_reconcile_command
from shadow.diffcli import add_diff_command

DEFAULT_CONFIG = os.environ.get("CUTOVER_CONFIG", "routes.yaml")
Command = Callable[[argparse.Namespace], int]


def _run(args: argparse.Namespace) -> int:
    from proxy.observe import configure_logging
    from proxy.runner import compiled_parser_in_use, install_uvloop, serve, unwritable_dirs
    from proxy.workers import Parent, default_workers, die_with_parent

    configure_logging(args.log_level)
    if not compiled_parser_in_use() and not os.environ.get("CUTOVER_ALLOW_PY_PARSER"):
        print(
            "cutover: aiohttp's compiled HTTP parser is not in use (AIOHTTP_NO_EXTENSIONS?); "
            "refusing to run on the pure-Python parser. Set CUTOVER_ALLOW_PY_PARSER=1 to override.",
            file=sys.stderr,
        )
        return 2
    if args.worker is not None:  # one of `--workers N`, started by the parent
        die_with_parent()
        install_uvloop()
        return asyncio.run(serve(args.config, worker=args.worker, workers=args.of))
    # a file that cannot run, or folders that cannot be written, exit 2 here, before any worker
    problems = unwritable_dirs(load_config(args.config))
    for problem in problems:
        print(f"cutover: {problem}", file=sys.stderr)
    if problems:
        return 2
    workers = args.workers if args.workers is not None else default_workers()
    if workers > 1:
        return Parent(
            ["--config", args.config, "run", "--log-level", args.log_level], workers
        ).run()
    install_uvloop()
    return asyncio.run(serve(args.config))


def _validate(args: argparse.Namespace) -> int:
    from proxy.config.summary import render_text, weights_grid

    table = load_config(args.file or args.config)
    if args.json:
        print(
            orjson.dumps(
                {
                    "valid": True,
                    "version": table.version,
                    "migration": table.migration,
                    "routes": weights_grid(table),
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        print(render_text(table))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo.run import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cutover",
        description="Route, compare and dual-write between an old and a new CRM platform.",
    )
    parser.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG,
        help="routes.yaml to use (default: %(default)s, or $CUTOVER_CONFIG)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve traffic with routes.yaml")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes on one port (SO_REUSEPORT); default: the number of cores",
    )
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    validate = sub.add_parser("validate", help="check a routes.yaml and show the weights it sets")
    validate.add_argument("file", nargs="?", help="the file (default: --config)")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(func=_validate)

    add_diff_command(sub)
    add_outbox_commands(sub)
    add_reconcile_command(sub)
    add_control_commands(sub)

    demo = sub.add_parser("demo", help="simulated old and new platforms with cutover in front")
    demo.add_argument("--port", type=int, default=8080, help="cutover's port (default 8080)")
    demo.add_argument("--customers", type=int, default=300)
    demo.add_argument(
        "--traffic", type=float, default=5.0, help="background requests/s through cutover (0: none)"
    )
    demo.add_argument("--report-every", type=float, default=10.0, help=argparse.SUPPRESS)
    demo.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args.func
    try:
        return command(args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"cutover: {len(exc.issues)} problem(s) in {exc.source}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
