"""run_hydra.py --tune: RecBole hyper files read into Ray Tune spaces, and small searches on a
local Ray (2 CPUs, no dashboard, its files in a temporary directory)."""

import csv
import importlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

import run_hydra
from recbole_hydra import tune as hydra_tune
from recbole_hydra.config import PROPERTIES, make_config
from tests.conftest import ML100K, TINY_HYDRA, ml100k_slice, quiet_config

# --------------------------------------------------------------------------------------------
# the params file (no Ray)


def test_recbole_hyper_syntax_reads_into_ray_distributions():
    params = hydra_tune.parse_params(
        "# comment\n\nlearning_rate loguniform -8,0\nn_heads  choice [2, 4, 8]  # inline\n"
        "dropout_prob uniform 0.0,0.5\nhidden_size quniform 32,128,32\nwd quniform 0,0.1,0.05\n"
        "similarity choice ['cosine','dot']\n"
    )
    assert params == {
        "learning_rate": ("loguniform", [-8.0, 0.0]),
        "n_heads": ("choice", [2, 4, 8]),
        "dropout_prob": ("uniform", [0.0, 0.5]),
        "hidden_size": ("quniform", [32, 128, 32]),
        "wd": ("quniform", [0.0, 0.1, 0.05]),
        "similarity": ("choice", ["cosine", "dot"]),
    }
    space = hydra_tune.search_space(params)
    # RecBole's loguniform is exp(uniform(low, high)): bounds e^-8 .. e^0
    assert space["learning_rate"].lower == pytest.approx(math.exp(-8))
    assert space["learning_rate"].upper == pytest.approx(1.0)
    sizes = {space["hidden_size"].sample() for _ in range(200)}
    assert sizes <= {32, 64, 96, 128} and all(isinstance(s, int) for s in sizes)
    assert {space["n_heads"].sample() for _ in range(200)} == {2, 4, 8}


def test_the_shipped_hydra_space_is_valid():
    params = hydra_tune.read_params_file(PROPERTIES / "tune" / "hydra.hyper")
    assert {
        "learning_rate",
        "hidden_size",
        "n_layers",
        "n_heads",
        "dropout_prob",
        "d_state",
    } <= set(params)
    heads, sizes = params["n_heads"][1], params["hidden_size"][1]
    assert all(h % n == 0 for h in sizes for n in heads)
    assert hydra_tune.default_params_file("Hydra") == str(PROPERTIES / "tune" / "hydra.hyper")


@pytest.mark.parametrize(
    "line,message",
    [
        ("learning_rate loguniform", "expected NAME TYPE VALUE"),
        ("learning_rate lognormal -8,0", "unknown type 'lognormal'"),
        ("n_heads choice 4", "choice needs a non-empty list"),
        ("dropout_prob uniform 0.5", "uniform needs LOW,HIGH"),
        ("dropout_prob uniform a,b", "bounds must be numbers"),
        ("dropout_prob uniform 0.5,0.1", "finite LOW <= HIGH"),
        ("hidden_size quniform 32,128,0", "step Q > 0"),
    ],
)
def test_a_bad_line_is_one_line_naming_it(capsys, line, message):
    Path("bad.hyper").write_text("n_layers choice [1,2]\n\n" + line + "\n")
    code = run_hydra.main(["--tune", "--params_file=bad.hyper"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"bad.hyper:3: {line!r}:" in err[0] and message in err[0], err


def test_a_key_the_model_does_not_have_is_refused(capsys, tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=20)
    Path("typo.hyper").write_text("learnin_rate loguniform -8,0\n")
    code = run_hydra.main(
        [
            "--tune",
            "--params_file=typo.hyper",
            "--dataset=ml-100k-slice",
            f"--data_path={data}",
            "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "learnin_rate is not a config key of Hydra" in err[0]


def test_resume_without_a_search_is_one_line(capsys):
    code = run_hydra.main(["--tune", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no search to resume" in err[0]


# --------------------------------------------------------------------------------------------
# searches on a local Ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=80 * 1024 * 1024,
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def tiny_search(tmp_path, params_text, max_concurrent=2, config=None, **kwargs):
    data = ml100k_slice(tmp_path / "data", n_users=40)
    Path("space.hyper").write_text(params_text)
    config = quiet_config(data, **{"epochs": 2, **TINY_HYDRA, **(config or {})})
    return hydra_tune.search(
        "Hydra",
        "ml-100k-slice",
        params_file="space.hyper",
        config_dict=config,
        cpus_per_trial=1,
        max_concurrent=max_concurrent,
        verbose=0,
        **kwargs,
    )


def test_two_trial_search_writes_table_and_best_yaml(local_ray, tmp_path):
    space = "learning_rate loguniform -7,-5\ndropout_prob uniform 0.1,0.3\n"
    summary = tiny_search(tmp_path, space, num_samples=2)
    rows = summary["rows"]
    assert len(rows) == 2 and {r["status"] for r in rows} <= {"completed", "stopped early"}
    scores = [r["best_valid"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    best = summary["best"]
    assert best is rows[0] and best["status"] == "completed"
    assert set(summary["best_test_result"]) == {
        f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 50, 200)
    }

    # every epoch was reported to Tune, and the trial left what a plain run leaves
    trial_dir = Path(best["trial_dir"])
    with open(trial_dir / "progress.csv") as f:
        epochs = [r["epoch"] for r in csv.DictReader(f)]
    assert epochs[:2] == ["1", "2"]
    model_file = Path(best["model_file"])
    assert model_file.parent == trial_dir / "saved" and model_file.is_file()
    assert list((trial_dir / "log" / "Hydra").glob("*.log"))
    assert "| test |" in (trial_dir / "results.md").read_text()

    # the tables
    md = summary["table_md"].read_text()
    assert md.splitlines()[0].startswith("| # | trial | status | learning_rate | dropout_prob")
    assert best["trial"] in md.splitlines()[2] and "best trial" in md
    with open(summary["table_csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]

    # the best config reruns through the CLI
    best_yaml = yaml.safe_load(summary["best_yaml"].read_text())
    assert best_yaml["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    assert best_yaml["epochs"] == 2 and best_yaml["hidden_size"] == 16
    config = make_config("Hydra", "ml-100k-slice", [str(summary["best_yaml"])])
    assert config["learning_rate"] == pytest.approx(best["params"]["learning_rate"])
    rerun = ["--dataset=ml-100k-slice", f"--config_files={summary['best_yaml']}"]
    assert run_hydra.main(rerun) == 0
    assert len(list(Path("saved").glob("Hydra-*.pth"))) == 1

    # resuming a finished search runs nothing again and gives the same table
    again = hydra_tune.search(None, None, resume=str(summary["experiment_dir"]), verbose=0)
    assert [(r["trial"], r["best_valid"]) for r in again["rows"]] == [
        (r["trial"], r["best_valid"]) for r in rows
    ]


def test_no_trial_is_stopped_before_early_stopping_could_stop_it(local_ray, tmp_path):
    """ASHA judges first after ``stopping_step`` validations: a trial that starts slowly (a
    learning rate 10^4 times smaller than the first trial's) still trains that long."""
    rates = [{"learning_rate": 1e-2}, {"learning_rate": 1e-6}]
    summary = tiny_search(
        tmp_path,
        "learning_rate choice [0.01,0.000001]\n",
        max_concurrent=1,  # the fast trial's scores are there when the slow one is judged
        config={"epochs": 6, "stopping_step": 3},
        num_samples=2,
        points_to_evaluate=rates,
    )
    for row in summary["rows"]:
        with open(Path(row["trial_dir"]) / "progress.csv") as f:
            epochs = {r["epoch"] for r in csv.DictReader(f) if r["epoch"]}
        assert len(epochs) >= 3, (row["params"], row["status"], sorted(epochs))


def test_a_failing_trial_is_reported_and_the_other_finishes(local_ray, tmp_path):
    summary = tiny_search(
        tmp_path,
        "n_heads choice [2,3]\n",
        num_samples=2,
        points_to_evaluate=[{"n_heads": 3}, {"n_heads": 2}],
    )
    by_heads = {r["params"]["n_heads"]: r for r in summary["rows"]}
    assert by_heads[3]["status"] == "failed"
    assert by_heads[3]["error"].startswith("UsageError: hidden_size (16) is not divisible")
    assert by_heads[2]["status"] == "completed" and summary["best"] is by_heads[2]
    assert summary["rows"][-1] is by_heads[3]  # failed trials come last
    assert "failed: UsageError: hidden_size (16)" in summary["table_md"].read_text()


def test_leaderboard_tuning_writes_the_best_keys_and_trains_the_tuned_row(
    local_ray, tmp_path, monkeypatch, capsys
):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    leaderboard = importlib.import_module("leaderboard")
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "Hydra.hyper").write_text("n_heads choice [4,8]\n")  # --set below gives 2
    (spaces / "Hydra-dot.hyper").write_text("n_heads choice [3,5]\n")  # 16 wide: every trial fails
    monkeypatch.setattr(leaderboard, "SPACES", spaces)
    data = ml100k_slice(tmp_path / "data", n_users=40)
    config = quiet_config(data, epochs=2, **TINY_HYDRA)
    sets = [f"--set={k}={v!r}" for k, v in config.items() if k != "data_path"]
    out, tuned = tmp_path / "results", tmp_path / "tuned" / "ml-100k-slice-10"
    leaderboard.main(
        ["--tune", "2", "--dataset", "ml-100k-slice", "--length", "10", "--seeds", "1"]
        + ["--models", "Hydra,Hydra-dot", "--data_path", data, "--threads", "1", *sets]
        + ["--out", str(out), "--workdir", str(tmp_path / "runs"), "--tuned", str(tuned.parent)]
    )
    printed = capsys.readouterr().out
    assert "Hydra-dot: every trial failed, the first with: UsageError: hidden_size (16)" in printed
    assert sorted(p.name for p in tuned.iterdir()) == ["Hydra.yaml"]
    text = (tuned / "Hydra.yaml").read_text()
    assert "best of 2 trials," in text.splitlines()[0]
    best = yaml.safe_load(text)
    assert list(best) == ["n_heads"] and best["n_heads"] in (4, 8)
    store = out / "leaderboard" / "ml-100k-slice-10"
    assert sorted(p.stem for p in store.glob("*.json")) == [
        "Hydra-dot-seed2020",
        "Hydra-seed2020",
        "Hydra-tuned-seed2020",
    ]
    run = json.loads((store / "Hydra-tuned-seed2020.json").read_text())
    started = json.loads(
        (tmp_path / "runs" / "ml-100k-slice-10" / "Hydra-tuned-seed2020" / "spec.json").read_text()
    )
    assert started["config"] == run["config"]  # what check_stored compares a rerun with
    assert run["config"]["n_heads"] == best["n_heads"]  # the tuned key wins over --set
    assert json.loads((store / "Hydra-seed2020.json").read_text())["config"]["n_heads"] == 2
    assert "| Hydra-tuned | 1 |" in (out / "leaderboard-ml-100k-slice-10.md").read_text()


def test_every_leaderboard_space_fits_its_row_on_ml_100k(monkeypatch):
    """Each shipped ``benchmarks/spaces/<row>.hyper`` names a leaderboard row and only keys of
    its model; every head count divides the row's width and every negative count fits the
    smallest leaderboard dataset, so no trial there fails on the space itself."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    leaderboard = importlib.import_module("leaderboard")
    with open(ML100K, encoding="utf-8") as f:
        column = f.readline().split("\t").index("item_id:token")
        n_items = len({line.split("\t")[column] for line in f})
    spaces = sorted(leaderboard.SPACES.glob("*.hyper"))
    assert {p.stem for p in spaces} >= {"Hydra", "Hydra-CE-dot", "SASRec+-dot", "HSTU"}
    for path in spaces:
        model, row_config = leaderboard.VARIANTS[path.stem]
        config = make_config(model, "ml-100k", config_dict=row_config).final_config_dict
        params = hydra_tune.read_params_file(path)
        assert set(params) <= set(config), path.name
        for heads in params.get("n_heads", (None, []))[1]:
            assert config["hidden_size"] % heads == 0, (path.name, heads)
        for negatives in params.get("num_negatives", (None, []))[1]:
            assert negatives < n_items, (path.name, negatives)
