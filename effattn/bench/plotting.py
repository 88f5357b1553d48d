"""``effattn bench --plot``: latency and peak memory vs input positions, log-log, one line per backend.

matplotlib is optional (the ``bench`` extra): :func:`check_plotting` says so before a run, not after it.
"""

from __future__ import annotations

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
    """Latency (and peak memory, where measured) vs input positions, log-log, one line per backend."""
    plt = check_plotting()
    panels = _panels(results)
    has_memory = any(r.peak_host_mib or r.peak_device_mib for r in results.rows)
    rows = 2 if has_memory else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(4.2 * len(panels), 3.6 * rows), squeeze=False)
    for col, (panel, lines) in enumerate(panels):
        for row, what in enumerate(["time", "memory"][:rows]):
            _draw(
                axes[row][col],
                results,
                panel,
                lines,
                what,
                legend=row == 0 and (col == 0 or panel == "EA vs dot-product"),
            )
    env = results.environment
    machine = env.get("gpu") or env.get("cpu")
    fig.suptitle(title or f"effattn bench: {machine}, {env.get('threads')} threads", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def _draw(ax, results: BenchResults, panel: str, lines: list[tuple[str, str, str]], what: str, legend: bool) -> None:
    from matplotlib.ticker import NullFormatter

    for label, model, backend in lines:
        pts = results.series(model, backend, what)
        if pts:
            ax.plot(
                [p for p, _ in pts],
                [v for _, v in pts],
                marker="o",
                ms=3,
                label=label,
                linestyle="--" if label.startswith("DP") else "-",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("positions (H x W)")
    ax.set_ylabel("median latency (ms)" if what == "time" else "peak memory (MiB)")
    ax.set_title(panel, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
