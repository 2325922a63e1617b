"""`python -m bench` (what `./dev bench` runs): the whole suite, see bench/README.md."""

from bench.suite import main

raise SystemExit(main())
