"""The latency-vs-rate plot (matplotlib, installed into the virtualenv on first use).

matplotlib is the optional dependency group `bench` in pyproject.toml; it is imported through
importlib so that type checking does not depend on it being installed.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIREMENT = "matplotlib>=3.8"  # keep in step with pyproject's [project.optional-dependencies]


def ensure_matplotlib() -> bool:
    """True when matplotlib can be imported; installs it into the running virtualenv if not."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        pass
    else:
        return True
    if sys.prefix == sys.base_prefix:
        print(
            f"bench: matplotlib is missing and this Python is not a virtualenv; no plot "
            f"(pip install '{REQUIREMENT}', or use .venv/bin/python)"
        )
        return False
    print(f"bench: installing {REQUIREMENT} into {sys.prefix} (the optional group 'bench')")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", REQUIREMENT],
        capture_output=True,
        text=True,
        check=False,
    )
    importlib.invalidate_caches()
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        print(f"bench: could not install matplotlib; no plot\n{done.stderr[-1500:]}")
        return False
    return True


@dataclass(frozen=True)
class Point:
    rate: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    sustained: bool


def plot_latency(series: dict[str, list[Point]], path: Path, title: str) -> None:
    """Three panels (p50, p99, p99.9) of latency vs offered rate, one line per case, log y.
    Points at rates a case did not sustain are drawn hollow."""
    mpl: Any = importlib.import_module("matplotlib")
    mpl.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8), sharey=True)
    panels = (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"))
    for ax, (label, attr) in zip(axes, panels, strict=True):
        for index, (name, points) in enumerate(series.items()):
            color = f"C{index % 10}"
            shown = [(p.rate, getattr(p, attr), p.sustained) for p in points]
            shown = [(r, v, s) for r, v, s in shown if v is not None]
            if not shown:
                continue
            ax.plot(
                [r for r, _, _ in shown],
                [v for _, v, _ in shown],
                "-",
                color=color,
                label=name,
                linewidth=1.6,
            )
            ok = [(r, v) for r, v, s in shown if s]
            bad = [(r, v) for r, v, s in shown if not s]
            if ok:
                ax.scatter([r for r, _ in ok], [v for _, v in ok], color=color, s=28, zorder=3)
            if bad:
                ax.scatter(
                    [r for r, _ in bad],
                    [v for _, v in bad],
                    facecolors="none",
                    edgecolors=color,
                    s=70,
                    linewidths=1.6,
                    zorder=3,
                )
        ax.set_yscale("log")
        ax.set_title(f"{label} latency")
        ax.set_xlabel("offered rate (requests/s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    fig.suptitle(title + "   (hollow: rate not sustained, latency understated)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
