"""benchmarks/frontier.py: the paired rounds, the frontier's points and what its report pairs."""

import json
import random

import pytest

from recbole_hydra.config import make_config
from tests.conftest import TINY_HYDRA, ml100k_slice, quiet_config


def test_the_frontier_holds_exactly_the_points_nothing_beats(script):
    frontier = script("frontier")
    rng = random.Random(0)
    points = [(rng.randint(1, 8), rng.randint(1, 8)) for _ in range(40)]  # ties on purpose
    front = set(frontier.pareto(points))

    def beats(a, b):  # a at most as costly, at least as good, better in one
        return a[0] <= b[0] and a[1] >= b[1] and a != b

    for i, p in enumerate(points):
        beaten = any(beats(q, p) for q in points)
        assert (i in front) == (not beaten), (p, sorted(points[j] for j in front))
    assert frontier.pareto([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points both stay


def test_plot_labels_are_lifted_apart_and_lone_ones_stay(script):
    frontier = script("frontier")
    rng = random.Random(1)
    points = [(rng.uniform(0, 60), rng.uniform(0, 30)) for _ in range(30)]  # crowded on purpose
    names = [f"row-{i}" * (1 + i % 3) for i in range(len(points))]
    lifts = frontier.label_lifts(points, names)
    boxes = [
        (x, x + 3.3 * len(n), y + lift, y + lift + 7.0)
        for (x, y), n, lift in zip(points, names, lifts)
    ]
    for i, (l1, r1, b1, t1) in enumerate(boxes):  # brute force: every pair of label boxes
        for l2, r2, b2, t2 in boxes[i + 1 :]:
            eps = 1e-9  # boxes that touch, to rounding, do not overlap
            assert not (l1 < r2 and l2 < r1 and b1 < t2 - eps and b2 < t1 - eps)
    assert all(lift >= 0 for lift in lifts) and any(lifts)
    assert frontier.label_lifts([(0, 0), (500, 0)], ["a", "b"]) == [0.0, 0.0]


def test_paired_rounds_rotate_the_order_and_time_every_row(script, tmp_path, capsys):
    frontier = script("frontier")
    path = ml100k_slice(tmp_path)
    hstu = {k: TINY_HYDRA[k] for k in ("hidden_size", "n_layers", "MAX_ITEM_LIST_LENGTH")}
    rows = {
        "Hydra": ("Hydra", quiet_config(path, **TINY_HYDRA)),
        "HSTU": ("HSTU", quiet_config(path, **hstu, num_negatives=16)),
        "chunk-4": ("Hydra", quiet_config(path, **{**TINY_HYDRA, "chunk_size": 4})),
    }
    frontier.time_worker({"dataset": "ml-100k-slice", "rounds": 4, "rows": rows})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line[line.index("{") :])
    orders = [r["order"] for r in result["rounds"]]
    assert orders == [
        ["Hydra", "HSTU", "chunk-4"],
        ["HSTU", "chunk-4", "Hydra"],
        ["chunk-4", "Hydra", "HSTU"],
        ["Hydra", "HSTU", "chunk-4"],
    ]
    for r in result["rounds"]:
        assert set(r["times"]) == set(rows)
        assert all(t["train_s"] > 0 and t["eval_s"] > 0 for t in r["times"].values())
    assert result["params"]["Hydra"] == result["params"]["chunk-4"]  # a speed-only knob
    assert result["params"]["Hydra"] != result["params"]["HSTU"]
    config = make_config("Hydra", "ml-100k-slice", config_dict=rows["Hydra"][1])
    assert config["chunk_size"] == TINY_HYDRA["chunk_size"]  # the rows' own configs were built


def _run(variant, seed, masked, unmasked, s_per_epoch, length=200, peak_rss_mb=100.0):
    return {
        "variant": variant,
        "seed": seed,
        "config": {"MAX_ITEM_LIST_LENGTH": length},
        "n_params": 100,
        "train_s_per_epoch": s_per_epoch,
        "peak_rss_mb": peak_rss_mb,
        "masked": {"test": {"ndcg@10": masked}},
        "unmasked": {"test": {"ndcg@10": unmasked}},
    }


def test_the_report_pairs_rounds_and_marks_what_was_not_paired(script, tmp_path):
    pytest.importorskip("matplotlib")
    frontier = script("frontier")
    out = tmp_path / "results"
    stores = {s: out / s / "ml-100k-200" for s in frontier.SUITES}
    for store in stores.values():
        store.mkdir(parents=True)
    runs = {
        "leaderboard": [
            _run("Hydra", 2020, 0.10, 0.05, 9.0, peak_rss_mb=100.0),
            _run("Hydra", 2021, 0.12, 0.07, 11.0, peak_rss_mb=300.0),
        ]
        + [_run("HSTU", 2020, 0.06, 0.04, 4.0)],
        # the same row in a later suite is the first suite's: not counted twice
        "ablations": [_run("Hydra", 2020, 0.5, 0.5, 1.0), _run("heads-2", 2020, 0.09, 0.05, 6.0)]
        + [_run("length-50", 2020, 0.2, 0.2, 1.0, length=50)],  # another length: not a point
    }
    for suite, group in runs.items():
        for r in group:
            (stores[suite] / f"{r['variant']}-seed{r['seed']}.json").write_text(json.dumps(r))
    # per-round Hydra / HSTU: 0.5, 2.0, 0.5 -> median 0.5 (the ratio of medians would be 0.75)
    rounds = [
        {"order": [], "times": {"HSTU": {"train_s": a, "eval_s": 1.0}, **b}}
        for a, b in (
            (
                10.0,
                {
                    "Hydra": {"train_s": 5.0, "eval_s": 2.0},
                    "chunk-25": {"train_s": 4.0, "eval_s": 2.0},
                },
            ),
            (
                20.0,
                {
                    "Hydra": {"train_s": 40.0, "eval_s": 2.0},
                    "chunk-25": {"train_s": 8.0, "eval_s": 2.0},
                },
            ),
            (
                30.0,
                {
                    "Hydra": {"train_s": 15.0, "eval_s": 2.0},
                    "chunk-25": {"train_s": 12.0, "eval_s": 2.0},
                },
            ),
        )
    ]
    call = {"rounds": rounds, "params": {"HSTU": 1, "Hydra": 2, "chunk-25": 2}}
    times = out / "frontier" / "ml-100k-200-times.json"
    times.write_text(json.dumps([{**call, "command": "c", "hardware": "h"}]))
    memory = out / "frontier" / "ml-100k-200-memory.json"
    measured = [  # the latest call that measured a row gives its column
        {"Hydra": (500.0, 900.0), "HSTU": (480.0, 680.0)},
        {"Hydra": (500.0, 800.0)},
    ]
    memory.write_text(
        json.dumps(
            [
                {
                    "rows": {
                        n: {
                            "before_mb": a,
                            "peak_mb": b,
                            "train_mb": b - a,
                            "steps": 4,
                            "params": 1,
                        }
                        for n, (a, b) in call.items()
                    },
                    "command": "c",
                    "hardware": "h",
                }
                for call in measured
            ]
        )
    )
    suite_report = out / "frontier-ml-100k-200.md"  # leaderboard.py's frontier suite writes it
    suite_report.write_text("the suite's report")
    args = frontier.argparse.Namespace(dataset="ml-100k", length=200, out=str(out))
    frontier.write_report(args)
    assert suite_report.read_text() == "the suite's report"
    report = (out / "cost-frontier-ml-100k-200.md").read_text()
    points = {
        line.split(" | ")[0].strip("| "): line.split(" | ")
        for line in report.split("## Points")[1].split("## Paired")[0].splitlines()
        if line.startswith("| ") and not line.startswith("| row")
    }
    assert set(points) == {"Hydra", "HSTU", "chunk-25", "heads-2"}
    assert points["Hydra"][1] == "2" and points["Hydra"][8] == "0.1100"  # its 2 leaderboard seeds
    assert points["chunk-25"][8] == "0.1100"  # a speed-only row: the base row's quality
    assert points["Hydra"][6] == "200" and points["HSTU"][6] == "100"  # median of its runs' peaks
    assert points["Hydra"][3] == "15.0" and points["heads-2"][3] == "6.0 ~"  # paired; not paired
    assert (points["Hydra"][7], points["HSTU"][7], points["heads-2"][7]) == ("300", "200", "-")
    first = report.split("## Training memory, call 1")[1].split("## Training memory, call 2")[0]
    assert "| Hydra | 1 | 4 | 500 | 900 | 400 | 2.00 |" in first  # over HSTU's 200
    assert points["Hydra"][5] == "1" and points["heads-2"][5] == "-"
    paired = report.split("## Paired call 1")[1]
    hydra = next(line for line in paired.splitlines() if line.startswith("| Hydra |"))
    assert "0.500 (0.500-2.000)" in hydra
    # medians: heads-2 6 s ~ (0.09), chunk-25 8 s (0.11), Hydra 15 s (0.11), HSTU 20 s (0.06)
    assert points["heads-2"][-1].strip(" |") == "masked unmasked"  # the cheapest
    assert points["chunk-25"][-1].strip(" |") == "masked unmasked"  # the best at its cost
    assert points["Hydra"][-1].strip(" |") == "-"  # chunk-25 is as good and cheaper
    assert points["HSTU"][-1].strip(" |") == "-"
    assert (out / "cost-frontier-ml-100k-200.png").exists()


def test_timing_needs_a_pair_of_known_rows(script, tmp_path, capsys):
    frontier = script("frontier")
    base = ["--dataset", "ml-100k", "--out", str(tmp_path), "--workdir", str(tmp_path / "w")]
    for rows, says in (
        ("Hydra", "--time needs two different rows or more: a ratio needs a pair"),
        ("Hydra,Hydra", "--time needs two different rows or more: a ratio needs a pair"),
        ("Hydra,Nope", "unknown row 'Nope': one of Hydra, "),
    ):
        with pytest.raises(SystemExit) as stop:
            frontier.main([*base, "--time", rows])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert says in err.splitlines()[-1]
    assert not (tmp_path / "w").exists()  # nothing ran


def test_a_report_of_timings_without_quality_says_so(script, tmp_path):
    pytest.importorskip("matplotlib")
    frontier = script("frontier")
    out = tmp_path / "results"
    times = out / "frontier" / "ml-1m-50-times.json"
    times.parent.mkdir(parents=True)
    rounds = [
        {
            "order": [],
            "times": {
                "HSTU": {"train_s": 2.0, "eval_s": 1.0},
                "Hydra": {"train_s": 3.0, "eval_s": 1.0},
            },
        }
    ]
    call = {"rounds": rounds, "params": {"HSTU": 1, "Hydra": 2}, "command": "c", "hardware": "h"}
    times.write_text(json.dumps([call]))
    frontier.write_report(frontier.argparse.Namespace(dataset="ml-1m", length=50, out=str(out)))
    report = (out / "cost-frontier-ml-1m-50.md").read_text()
    points = report.split("## Points")[1].split("## Paired")[0]
    assert "No quality yet" in points and "| row" not in points
    assert "| Hydra | 2 | 3.0 (3.0-3.0) | 1.500 (1.500-1.500)" in report


def test_training_memory_grows_with_the_batch_and_leaves_out_the_data(
    script, tmp_path, monkeypatch, capsys
):
    frontier = script("frontier")
    path = ml100k_slice(tmp_path, n_users=943)  # the whole ml-100k: batches of 512 windows
    sizes = {**TINY_HYDRA, "hidden_size": 64, "MAX_ITEM_LIST_LENGTH": 50}
    rows = {
        f"batch-{b}": ("Hydra", quiet_config(path, **sizes, train_batch_size=b), {})
        for b in (8, 512)
    }
    monkeypatch.setattr(frontier, "all_rows", lambda args: rows)
    out = tmp_path / "results"
    argv = ["--dataset", "ml-100k-slice", "--length", "50", "--data_path", path, "--out", str(out)]
    argv += ["--workdir", str(tmp_path / "w"), "--memory", "batch-8,batch-512", "--steps", "2"]
    assert frontier.main(argv) == 0
    [call] = json.loads((out / "frontier" / "ml-100k-slice-50-memory.json").read_text())
    small, large = call["rows"]["batch-8"], call["rows"]["batch-512"]
    for m in (small, large):
        assert m["steps"] == 2 and m["peak_mb"] >= m["before_mb"] > 0
        assert m["train_mb"] == pytest.approx(m["peak_mb"] - m["before_mb"])
    # the data and interpreter (hundreds of MB) are in the RSS before, not in what training adds
    assert small["train_mb"] < 0.25 * small["before_mb"]
    # 64 times the windows per step: activations of 512 x 50 x 64 floats are 6.5 MB each
    assert large["train_mb"] > small["train_mb"] + 20
    assert large["params"] == small["params"]
    # what autograd keeps is alive at once at the peak, on top of the RSS before
    assert small["saved_mb"] > 0 and large["saved_mb"] > 20 * small["saved_mb"]
    assert large["saved_mb"] < large["train_mb"]
    assert sum(mb for _, mb in large["saved_by_line"]) <= large["saved_mb"] + 1e-9
    assert all(line.split(":")[0].endswith(".py") for line, _ in large["saved_by_line"])
    report = (out / "cost-frontier-ml-100k-slice-50.md").read_text()
    section = report.split("## Training memory, call 1")[1]
    line = next(x for x in section.splitlines() if x.startswith("| batch-512 |"))
    ratio = large["train_mb"] / small["train_mb"]
    assert line.rstrip(" |").endswith(f"{ratio:.2f}")  # over the first row: no HSTU in the call
    assert f"- batch-512: {large['saved_mb']:.0f} in all; `" in section


def test_memory_needs_known_rows(script, tmp_path, capsys):
    frontier = script("frontier")
    base = ["--dataset", "ml-100k", "--out", str(tmp_path), "--workdir", str(tmp_path / "w")]
    for argv, says in (
        (["--memory", ","], "--memory needs a row"),
        (["--memory", "Nope"], "unknown row 'Nope': one of Hydra, "),
        (["--memory", "Hydra", "--steps", "0"], "--steps must be >= 1"),
    ):
        with pytest.raises(SystemExit) as stop:
            frontier.main([*base, *argv])
        assert stop.value.code == 2
        assert says in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "w").exists()
