"""The benchmark scripts' shared helpers: what a missing optional dependency says."""

import importlib.util
import sys
from pathlib import Path

import pytest


def load_harness():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "harness.py"
    spec = importlib.util.spec_from_file_location("benchmark_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plots_without_matplotlib_end_in_one_line_naming_the_extra(monkeypatch, capsys):
    harness = load_harness()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as stop:
        harness.pyplot()
    assert stop.value.code == 2
    assert capsys.readouterr().err == 'the plots need matplotlib: pip install -e ".[bench]"\n'


def test_plots_with_matplotlib_use_a_backend_without_a_display():
    pytest.importorskip("matplotlib")
    plt = load_harness().pyplot()
    assert plt.get_backend().lower() == "agg"


def test_leaderboard_without_matplotlib_stops_before_it_trains(monkeypatch, capsys, tmp_path):
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    spec = importlib.util.spec_from_file_location(
        "leaderboard_script", benchmarks / "leaderboard.py"
    )
    leaderboard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(leaderboard)
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
