"""The benchmark scripts' shared helpers: what a missing optional dependency says, and the
leaderboard's bookkeeping (the goal and cost sections, stored runs checked against their rows)."""

import json
import statistics
import sys

import pytest


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


def _runs(model, valid, test):
    """Stored leaderboard runs of one row, one per seed: NDCG@10 alike on both protocols."""
    result = [
        {"valid": {"ndcg@10": v}, "test": {"ndcg@10": t}} for v, t in zip(valid, test, strict=True)
    ]
    return [{"model": model, "masked": r, "unmasked": r} for r in result]


def _goal_rows(leaderboard, by_variant):
    lines = leaderboard.goal_section(by_variant)
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines if "(n=" in line]


def test_leaderboard_goal_picks_rows_by_validation_and_weighs_the_gap(script):
    leaderboard = script("leaderboard")
    by_variant = {  # the best test row of each side is not its best valid row
        "Hydra-test": _runs("Hydra", [0.10, 0.10], [0.30, 0.30]),
        "Hydra-valid": _runs("Hydra", [0.20, 0.22], [0.21, 0.23]),
        "HSTU": _runs("HSTU", [0.19, 0.19], [0.20, 0.20]),
        "SASRec+": _runs("SASRecGen", [0.05, 0.05], [0.25, 0.25]),
    }
    rows = _goal_rows(leaderboard, by_variant)
    assert [r[0] for r in rows] == ["masked", "unmasked"]
    ratio = statistics.mean([0.21, 0.23]) / 0.20
    assert rows[0] == [
        "masked",
        "Hydra-valid (n=2)",
        "HSTU (n=2)",
        f"{ratio:.3f}",
        "yes" if ratio >= 1.05 else "no",
        "yes" if 0.22 - 0.20 > statistics.stdev([0.21, 0.23]) else "no",
    ]
    anchors = [("A", 0.25, 0.4, "unmasked", "x"), ("B", 0.2, 0.3, "masked", "y")]
    anchors.append(("C", 0.18, 0.3, "masked", "z"))
    published = [
        line for line in leaderboard.goal_section(by_variant, anchors) if "published" in line
    ]
    assert published == [  # the best masked anchor, not the best anchor
        "Masked, against the best published figure: Hydra-valid (n=2) has 0.2200, "
        f"{0.22 / 0.2:.3f}x B's 0.2000 (their dataset differs slightly)."
    ]
    assert not any(
        "published" in line for line in leaderboard.goal_section(by_variant, anchors[:1])
    )
    by_variant["HSTU"] = _runs("HSTU", [0.19], [0.20])
    assert _goal_rows(leaderboard, by_variant)[1][-1] == "n < 2"
    del by_variant["HSTU"], by_variant["SASRec+"]
    assert leaderboard.goal_section(by_variant) == []  # no baseline: no goal to state


def test_leaderboard_cost_marks_runs_that_early_stopping_did_not_end(script):
    leaderboard = script("leaderboard")
    run = dict(n_params=10, train_s_per_epoch=1.0, best_epoch=5, wall_s=60.0, peak_rss_mb=100.0)
    by_variant = {
        "HSTU": [{**run, "epochs": 16, "stopped_early": True}, {**run, "epochs": 100}],
        "Hydra": [{**run, "epochs": 50, "stopped_early": False}],
    }
    lines = leaderboard.cost_section(by_variant)
    cells = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in lines[4:6]}
    assert cells == {"HSTU": "16/100?", "Hydra": "50*"}
    assert any(line.startswith("\\* early stopping did not end the run") for line in lines)
    assert any(line.startswith("? the run's record does not say") for line in lines)
    by_variant["HSTU"][1]["stopped_early"] = True
    del by_variant["Hydra"]
    assert not any(line.startswith(("\\*", "?")) for line in leaderboard.cost_section(by_variant))


def test_ablations_are_weighed_against_the_default_hydra_and_its_noise(script):
    leaderboard = script("leaderboard")
    cost = dict(n_params=100, train_s_per_epoch=2.0)
    by_variant = {
        "Hydra": [{**r, **cost} for r in _runs("Hydra", [0.1, 0.1], [0.20, 0.22])],
        "no-rope-on-z": [{**r, **cost} for r in _runs("Hydra", [0.1, 0.1], [0.15, 0.16])],
        "heads-8": [
            {**r, "n_params": 150, "train_s_per_epoch": 3.0}
            for r in _runs("Hydra", [0.1, 0.1], [0.205, 0.215])
        ],
        "length-50": [{**r, **cost} for r in _runs("Hydra", [0.1], [0.30])],
    }
    lines = leaderboard.ablation_section(by_variant)
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
        if len(cells) == 8 and cells[1].isdigit()
    }
    assert "Hydra" not in rows  # the base is what the others are divided by
    ratio = f"{0.155 / 0.21:.3f}"
    assert rows["no-rope-on-z"] == ["2", ratio, "yes", ratio, "yes", "1.00", "1.00"]
    assert rows["heads-8"] == ["2", "1.000", "no", "1.000", "no", "1.50", "1.50"]
    assert rows["length-50"][2] == rows["length-50"][4] == "n < 2"
    del by_variant["Hydra"]
    assert leaderboard.ablation_section(by_variant) == []  # no base: nothing to divide by


def test_a_decaying_schedule_is_fitted_to_the_epochs_early_stopping_let_its_runs_train(
    script, tmp_path, monkeypatch
):
    leaderboard = script("leaderboard")
    args = leaderboard.argparse.Namespace(
        suite="leaderboard", dataset="ml-100k", length=50, out=str(tmp_path), tuned=str(tmp_path)
    )
    store = tmp_path / "leaderboard" / "ml-100k-50"
    store.mkdir(parents=True)

    def stored(variant, *epochs, early=True):
        for seed, n in enumerate(epochs, start=2020):
            record = {"variant": variant, "epochs": n, "stopped_early": early}
            (store / f"{variant}-seed{seed}.json").write_text(json.dumps(record))

    stored("Hydra-CE-dot", 19, 23, 39)  # cosine (Hydra.yaml), every run stopped early
    stored("SASRec+", 30, 50)
    (store / "SASRec+-seed2021.json").write_text(
        json.dumps({"variant": "SASRec+", "epochs": 50, "stopped_early": False})
    )
    stored("HSTU", 20, 30)  # HSTU.yaml: a constant rate, nothing to fit
    rows = leaderboard.suite_rows(args)
    fitted = {name: row for name, row in rows.items() if name.endswith("-fit")}
    assert list(fitted) == ["Hydra-CE-dot-fit"]
    model, config, keys = fitted["Hydra-CE-dot-fit"]
    assert (model, config) == leaderboard.VARIANTS["Hydra-CE-dot"] and keys == {"epochs": 23}
    stored("SASRec+-dot", 30, 40)
    assert leaderboard.suite_rows(args)["SASRec+-dot-fit"][2] == {"epochs": 35}
    # a constant rate set by the row itself needs no fit either
    monkeypatch.setitem(
        leaderboard.VARIANTS, "Hydra-const", ("Hydra", {"lr_scheduler": "constant"})
    )
    stored("Hydra-const", 20)
    assert "Hydra-const-fit" not in leaderboard.suite_rows(args)


def test_leaderboard_refuses_a_stored_or_started_run_of_another_config(script, tmp_path, capsys):
    leaderboard = script("leaderboard")
    args = leaderboard.argparse.Namespace(
        suite="leaderboard", dataset="ml-100k", length=50, models=["Hydra", "HSTU"], seeds=2
    )
    args.data_path, args.workdir = str(tmp_path / "data"), str(tmp_path / "runs")
    args.tuned, args.out = str(tmp_path / "tuned"), str(tmp_path / "out")
    store = tmp_path / "results"
    store.mkdir()
    rows = leaderboard.suite_rows(args)

    def stored(variant, seed, **changes):
        config = leaderboard.run_config(args, {}, rows, variant, seed)[1]
        return json.dumps({"variant": variant, "config": {**config, **changes}})

    (store / "Hydra-seed2020.json").write_text(stored("Hydra", 2020))
    (store / "HSTU-seed2021.json").write_text(stored("HSTU", 2021))
    leaderboard.check_stored(args, {}, store)  # the same configs: nothing to say
    with pytest.raises(SystemExit) as stop:  # --set changes what the row gives
        leaderboard.check_stored(args, {"dropout_prob": 0.3}, store)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"{store / 'Hydra-seed2020.json'} has no dropout_prob (the yaml's), and the row now "
        f"gives dropout_prob=0.3: move {store / 'Hydra-seed2020.json'} aside to train the row "
        "again\n"
    )
    started = tmp_path / "runs" / "ml-100k-50" / "Hydra-seed2021"
    started.mkdir(parents=True)
    (started / "spec.json").write_text(stored("Hydra", 2021, n_layers=3))  # resumes on rerun
    with pytest.raises(SystemExit) as stop:
        leaderboard.check_stored(args, {}, store)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"{started / 'spec.json'} has n_layers=3, and the row now gives no n_layers (the yaml's): "
        f"move {started} aside to train the row again\n"
    )
