"""``effattn bench --plot``: latency and peak memory vs input positions, log-log, one line per backend.

matplotlib is optional (the ``bench`` extra): :func:`check_plotting` says so before a run, not after it.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

from ..errors import BackendError
from .results import BenchResults

PAIR = ("efficient_attention", "dot_product_attention")


def check_plotting() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, or a :class:`BackendError` saying how to get it;
    call it before a run that ends in a plot, so a missing extra costs nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendError("plots need matplotlib: pip install 'effattn[bench]'") from None
    return plt


def plot(results: BenchResults, path: str | Path, title: str | None = None) -> Path:
    """Save :func:`figure` as a PNG at ``path``."""
    plt = check_plotting()
    fig = figure(results, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure(results: BenchResults, title: str | None = None):
    """Latency (and peak memory, where measured) vs input positions, log-log, one line per backend: the median
    with its p10-p90 spread as a band, a legend in every panel, a tick at every size measured, and the
    results' load warnings written on the figure (timings taken on a busy machine must not pass for clean)."""
    plt = check_plotting()
    panels = _panels(results)
    has_memory = any(r.peak_host_mib or r.peak_device_mib for r in results.rows)
    rows = 2 if has_memory else 1
    height = 3.6 * rows + 0.25 * len(results.warnings)
    fig, axes = plt.subplots(rows, len(panels), figsize=(4.2 * len(panels), height), squeeze=False)
    for col, (panel, lines) in enumerate(panels):
        for row, what in enumerate(["time", "memory"][:rows]):
            _draw(axes[row][col], results, panel, lines, what)
    env = results.environment
    machine = env.get("gpu") or env.get("cpu")
    fig.suptitle(title or f"effattn bench: {machine}, {env.get('threads')} threads", fontsize=10)
    warning = "\n".join(f"WARNING: {w}" for w in results.warnings)
    if warning:
        fig.text(0.01, 0.005, warning, color="firebrick", fontsize=6, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.25 * len(results.warnings) / height, 1, 1))  # the warnings below the panels
    return fig


def _panels(results: BenchResults) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(title, [(label, model, backend)]) per panel: one per model, and both blocks together when both ran."""
    models = list(dict.fromkeys(r.model for r in results.rows))
    backends = list(dict.fromkeys(r.backend for r in results.rows))
    panels = [(model, [(backend, model, backend) for backend in backends]) for model in models]
    if all(m in models for m in PAIR):  # the scaling study: both blocks on one axis per metric
        panels.append(
            ("EA vs dot-product", [(f"{'EA' if m == PAIR[0] else 'DP'} {b}", m, b) for m in PAIR for b in backends])
        )
    return panels


def _draw(ax, results: BenchResults, panel: str, lines: list[tuple[str, str, str]], what: str) -> None:
    from matplotlib.ticker import NullLocator

    measured: set[int] = set()
    for label, model, backend in lines:
        pts = results.series(model, backend, what)
        if not pts:
            continue
        xs = [p for p, _ in pts]
        measured.update(xs)
        (line,) = ax.plot(
            xs, [v for _, v in pts], marker="o", ms=3, label=label, linestyle="--" if label.startswith("DP") else "-"
        )
        if what == "time":
            band = [(p, lo, hi) for p, lo, hi in results.spread(model, backend) if p in xs]
            if band:
                ax.fill_between(
                    [p for p, _, _ in band],
                    [lo for _, lo, _ in band],
                    [hi for _, _, hi in band],
                    color=line.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(measured)
    ax.set_xticks(ticks, [_size_label(p) for p in ticks], rotation=45 if len(ticks) > 4 else 0, fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())  # only the sizes measured are ticked
    ax.set_xlabel("input size (H x W; positions)")
    ax.set_ylabel("latency (ms): median, p10-p90 band" if what == "time" else "peak memory (MiB)")
    ax.set_title(panel, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def _size_label(positions: int) -> str:
    """A square image's side (``128x128``), else the number of positions."""
    side = math.isqrt(positions)
    return f"{side}x{side}" if side * side == positions else str(positions)
