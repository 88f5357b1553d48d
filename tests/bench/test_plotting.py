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
