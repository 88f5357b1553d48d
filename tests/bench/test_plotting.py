"""``bench --plot`` without matplotlib: a clear error, and one the CLI can ask for before the run."""

from __future__ import annotations

import sys

import pytest

from effattn.bench.plotting import check_plotting, plot
from effattn.bench.results import BenchResults
from effattn.errors import BackendError


def test_without_matplotlib_check_plotting_and_plot_say_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # None in sys.modules: the import raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(BackendError, match=r"plots need matplotlib: pip install 'effattn\[bench\]'"):
        check_plotting()
    with pytest.raises(BackendError, match="plots need matplotlib"):
        plot(BenchResults(), tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


def test_with_matplotlib_check_plotting_gives_pyplot():
    pytest.importorskip("matplotlib")
    assert hasattr(check_plotting(), "subplots")


def _results_with_spread() -> BenchResults:
    from effattn.bench.results import BenchRow
    from effattn.bench.timing import LatencyStats

    rows = []
    for size in (8, 16, 32, 64, 128):
        for backend, scale in (("torch", 2.0), ("onnxruntime", 1.0)):
            samples = [scale * size * k / 1e6 for k in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)]  # seconds
            stats = LatencyStats.from_samples(samples)
            rows.append(BenchRow("efficient_attention", backend, "cpu", [1, 64, size, size], stats, None, size))
    return BenchResults(rows, warnings=["machine busy before the run: load average 7.5 on 2 cores"])


def test_figure_spread_legends_ticks_and_load_warning():
    pytest.importorskip("matplotlib")
    from matplotlib.collections import PolyCollection

    from effattn.bench.plotting import figure

    results = _results_with_spread()
    fig = figure(results)
    time_ax, memory_ax = fig.axes
    for ax in fig.axes:  # one legend per panel, naming both backends
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["torch", "onnxruntime"]
    sizes = [8, 16, 32, 64, 128]
    assert list(time_ax.get_xticks()) == [s * s for s in sizes]  # a tick at every size measured, labelled
    assert [t.get_text() for t in time_ax.get_xticklabels()] == [f"{s}x{s}" for s in sizes]
    bands = [c for c in time_ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2 and not [c for c in memory_ax.collections if isinstance(c, PolyCollection)]
    ort = next(r.stats for r in results.rows if r.backend == "onnxruntime" and r.shape[2] == 128)
    lows, highs = bands[1].get_paths()[0].vertices[:, 1].min(), bands[1].get_paths()[0].vertices[:, 1].max()
    assert lows == pytest.approx(min(r.stats.p10_ms for r in results.rows if r.backend == "onnxruntime"))
    assert highs == pytest.approx(ort.p90_ms) and ort.p10_ms == pytest.approx(0.128 * 2)  # p10 of 1..11 is 2

    def warnings(fig) -> list[str]:
        return [t.get_text() for t in fig.texts if t is not fig._suptitle]

    assert warnings(fig) == ["WARNING: machine busy before the run: load average 7.5 on 2 cores"]
    assert warnings(figure(BenchResults(results.rows))) == []  # a clean run carries none
    again = BenchResults.from_dict(results.to_dict())  # the warning and p10 survive the JSON
    assert again.warnings == results.warnings and again.spread("efficient_attention", "torch")[0][1] > 0
