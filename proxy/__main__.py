"""`python -m proxy` is the `cutover` command (useful where the script is not on PATH)."""

import sys

from proxy.cli import main

sys.exit(main())
