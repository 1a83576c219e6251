"""The benchmark scripts' shared helpers: what a missing optional dependency says."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def script(monkeypatch):
    """Import a ``benchmarks/`` script by name, as the scripts import each other."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_plots_without_matplotlib_end_in_one_line_naming_the_extra(script, monkeypatch, capsys):
    harness = script("harness")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as stop:
        harness.pyplot()
    assert stop.value.code == 2
    assert capsys.readouterr().err == 'the plots need matplotlib: pip install -e ".[bench]"\n'


def test_plots_with_matplotlib_use_a_backend_without_a_display(script):
    pytest.importorskip("matplotlib")
    plt = script("harness").pyplot()
    assert plt.get_backend().lower() == "agg"


def test_leaderboard_without_matplotlib_stops_before_it_trains(
    script, monkeypatch, capsys, tmp_path
):
    leaderboard = script("leaderboard")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        leaderboard.main(
            ["--dataset", "ml-100k", "--models", "Hydra", "--seeds", "1", "--out", str(out)]
            + ["--workdir", str(tmp_path / "runs")]
        )
    assert stop.value.code == 2
    assert capsys.readouterr().err == 'the plots need matplotlib: pip install -e ".[bench]"\n'
    assert not out.exists() and not (tmp_path / "runs").exists()  # nothing ran, nothing written
