"""Rule errors found while compiling a table, carried back to the loader to be placed."""

from __future__ import annotations

from shadow.contract import RuleError


class RuleIssues(Exception):
    """Contract or compare rules of one or more routes that cannot be compiled."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__(f"{len(errors)} rule error(s)")
        self.errors = errors
