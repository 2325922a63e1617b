"""Build hook: with CUTOVER_COMPILE=1 the data path's modules are compiled with mypyc.

Everything else is in pyproject.toml. Compiled, a request costs about two thirds of its CPU
interpreted (bench/README.md, "Compiled with mypyc"); the interpreted sources stay the
reference (`./dev test`), and `./dev compile` builds a compiled copy beside them for the
bench and `./dev test --compiled`. Needs gcc, the Python headers and mypy at build time, and
nothing at run time. Async generators are not compiled by mypyc: they live in
proxy/http1/streams.py, which stays interpreted, as do the modules below not listed.
"""

from __future__ import annotations

import os

from setuptools import setup

#: the modules every request runs through (measured: bench/README.md)
COMPILED = [
    "proxy/headers.py",
    "proxy/http1/client.py",
    "proxy/http1/server.py",
    "proxy/http1/wire.py",
    "proxy/identity.py",
    "proxy/idlegate.py",
    "proxy/metrics.py",
    "proxy/mirror.py",
    "proxy/routing.py",
    "proxy/server.py",
    "proxy/shadowing.py",
    "proxy/telemetry.py",
    "proxy/upstream.py",
    "shadow/compare.py",
    "shadow/noise.py",
    "shadow/normalize.py",
    "shadow/stats.py",
]

if os.environ.get("CUTOVER_COMPILE") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"))
else:
    setup()
