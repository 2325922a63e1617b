"""What a table says, for people: the weights grid per route, used by `cutover validate`,
the admin state and the console."""

from __future__ import annotations

from typing import Any

from proxy.config.spec import ALL_METHODS
from proxy.config.table import RouteTable
from proxy.routing import is_rolled_back


def weights_grid(table: RouteTable, extra_rollback: frozenset[Any] = frozenset()) -> dict[str, Any]:
    """Per route: the percent on new for every channel x cohort, and whether a rollback holds it."""
    routes = {}
    for route in table.routes:
        cells: dict[str, dict[str, float]] = {}
        held: list[list[str]] = []
        for channel in table.channels:
            row = {}
            for cohort in table.cohort_names:
                row[cohort] = route.weight_bp(channel, cohort) / 100
                if is_rolled_back(table.rollback | extra_rollback, route.name, channel, cohort):
                    held.append([channel, cohort])
            cells[channel] = row
        routes[route.name] = {
            "api": route.api,
            "path": route.prefix,
            "methods": [m for m in ALL_METHODS if m in route.methods],
            "shadow_percent": route.spec.shadow_percent,
            "dual_write": route.spec.dual_write,
            "weights": cells,
            "rolled_back": held,
        }
    return routes


def render_text(table: RouteTable) -> str:
    scopes = sorted("/".join(part or "*" for part in scope) for scope in table.rollback)
    lines = [
        f"{table.source}: valid (version {table.version}, migration {table.migration})",
        f"  {len(table.routes)} routes, channels: {', '.join(table.channels)}; "
        f"cohorts: {', '.join(table.cohort_names)}",
        f"  rollback: {', '.join(scopes) if scopes else 'none'}",
    ]
    grid = weights_grid(table)
    cohorts = table.cohort_names
    width = max([len(c) for c in cohorts] + [6])
    label = max([len(c) for c in table.channels] + [8])
    for name, info in grid.items():
        lines.append("")
        lines.append(
            f"{name}: {info['api']} {info['path']}  [{' '.join(info['methods'])}]  "
            f"shadow {info['shadow_percent']:g}%  "
            f"dual-write {'on' if info['dual_write'] else 'off'}"
        )
        lines.append("  % on new".ljust(label + 2) + "".join(c.rjust(width + 2) for c in cohorts))
        held = {tuple(cell) for cell in info["rolled_back"]}
        for channel, row in info["weights"].items():
            cells = []
            for cohort in cohorts:
                text = "back" if (channel, cohort) in held else f"{row[cohort]:g}%"
                cells.append(text.rjust(width + 2))
            lines.append(f"  {channel}".ljust(label + 2) + "".join(cells))
    return "\n".join(lines)
