"""Checkpoints: nothing in them runs on load, none is lost or mixed up, each is bound to the data
it was trained on, and an interrupted run continues exactly where it stopped."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import recbole.quick_start
import torch

import run_hydra
from recbole_hydra import checkpoint
from recbole_hydra.checkpoint import read_checkpoint
from recbole_hydra.config import make_config
from recbole_hydra.errors import TrainingInterrupted, UsageError
from recbole_hydra.serving import StreamingRecommender
from recbole_hydra.training import evaluate_checkpoint, resume, run
from tests.conftest import ml100k_slice, quiet_config
from tests.test_run_and_checkpoints import TINY_HYDRA

REPO = Path(__file__).resolve().parent.parent
DATASET = "ml-100k-slice"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One short Hydra run on 40 users of ml-100k, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("safety")
    data = ml100k_slice(root / "data", n_users=40)
    config = quiet_config(data, epochs=2, checkpoint_dir=str(root / "saved"), **TINY_HYDRA)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = run("Hydra", DATASET, config_dict=config)
    return data, config, result


def cli(capsys, *argv):
    code = run_hydra.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


# -- plain data, nothing that runs -----------------------------------------------------------
@pytest.mark.parametrize("model", ["Hydra", "HSTU", "SASRec"])
def test_config_is_saved_as_plain_data_and_comes_back_equal(tmp_path, model):
    data = ml100k_slice(tmp_path / "data", n_users=5)
    config = make_config(model, DATASET, config_dict=quiet_config(data))
    torch.save(checkpoint.config_to_plain(config), tmp_path / "config.pth")
    back = checkpoint.config_from_plain(torch.load(tmp_path / "config.pth", weights_only=True))
    assert back.final_config_dict == config.final_config_dict
    assert back.parameters == config.parameters and back.model_class is config.model_class
    assert str(back) == str(config)


def test_a_checkpoint_from_before_a_key_existed_loads_as_it_was_trained(saved_run, tmp_path):
    """Keys added to Hydra after a checkpoint was written take the yaml's default, which is the
    behaviour the model had before: the old checkpoint evaluates exactly as it did."""
    _, _, result = saved_run
    saved = torch.load(result["model_file"], weights_only=True)
    for key in ("norm_placement", "rope_on_z", "gate_with_z", "seen_item_negatives", "share_bc"):
        del saved["config"]["final_config_dict"][key]
    older = tmp_path / "older.pth"
    torch.save(saved, older)
    assert evaluate_checkpoint(str(older))["test_result"] == result["test_result"]


def test_the_whole_checkpoint_loads_in_torchs_safe_mode(saved_run):
    _, _, result = saved_run
    raw = torch.load(result["model_file"], weights_only=True)
    assert raw["format"] == checkpoint.FORMAT and raw["resume"]["epoch"] == 1
    assert raw["dataset"]["users"]["count"] == 40


class Planted:
    """Unpickling this creates a file: what a crafted checkpoint can do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def crafted(saved_run, tmp_path):
    """A checkpoint that evaluates like the real one and plants a file when unpickled."""
    _, _, result = saved_run
    marker = tmp_path / "planted"
    state = torch.load(result["model_file"], weights_only=True)
    state["payload"] = Planted(marker)
    torch.save(state, tmp_path / "crafted.pth")
    return tmp_path / "crafted.pth", marker


def test_a_crafted_checkpoint_runs_nothing_on_any_load_path(crafted, capsys):
    path, marker = crafted
    loads = [
        lambda: read_checkpoint(path),
        lambda: evaluate_checkpoint(path),
        lambda: recbole.quick_start.load_data_and_model(str(path)),
        lambda: StreamingRecommender.from_checkpoint(path),
        lambda: checkpoint.export_llm_checkpoint(path, path.with_name("out.pth")),
    ]
    for load in loads:
        with pytest.raises(UsageError, match="--trust_checkpoint"):
            load()
    for argv in ([f"--checkpoint={path}"], ["--recommend", f"--checkpoint={path}", "--users=1"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and "can run code stored in it" in err[0], err
    assert checkpoint.main([str(path), str(path.with_name("out.pth"))]) == 2
    assert "can run code stored in it" in capsys.readouterr().err
    assert not marker.exists()
    # the payload is real: a caller who trusts the file gets it evaluated, and the file planted
    read_checkpoint(path, trust=True)
    assert marker.exists()


def test_a_pickled_recbole_checkpoint_loads_only_when_trusted(saved_run, tmp_path, capsys):
    """RecBole's own format (its Config object pickled, protocol 4) needs --trust_checkpoint."""
    _, _, result = saved_run
    ours = read_checkpoint(result["model_file"])
    legacy = {
        "config": ours["config"],
        "epoch": ours["epoch"],
        "cur_step": 0,
        "best_valid_score": ours["best_valid_score"],
        "state_dict": ours["state_dict"],
        "other_parameter": None,
        "optimizer": {},
    }
    path = tmp_path / "recbole.pth"
    torch.save(legacy, path, pickle_protocol=4)
    code, _, err = cli(capsys, f"--checkpoint={path}")
    assert code == 2 and len(err) == 1 and "--trust_checkpoint" in err[0], err
    code, out, _ = cli(capsys, f"--checkpoint={path}", "--trust_checkpoint")
    assert code == 0 and "| test |" in out
    assert evaluate_checkpoint(path, trust=True)["test_result"] == result["test_result"]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty (0 bytes)"),
        ("truncated", "is not a readable checkpoint (truncated?)"),
        (b"not a checkpoint\n", "is not a readable checkpoint"),
        ("tensor", "is not a RecBole checkpoint (it holds a Tensor"),
    ],
)
def test_bad_checkpoint_files_are_one_line(saved_run, tmp_path, capsys, content, message):
    _, _, result = saved_run
    path = tmp_path / "bad.pth"
    if content == "truncated":
        whole = Path(result["model_file"]).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif content == "tensor":
        torch.save(torch.ones(3), path)
    else:
        path.write_bytes(content)
    for argv in ([f"--checkpoint={path}"], [f"--resume_from={path}"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and len(err) == 1 and message in err[0], err


def test_recommend_needs_a_hydra_checkpoint(tmp_path, capsys):
    data = ml100k_slice(tmp_path / "data", n_users=20)
    config = quiet_config(data, MAX_ITEM_LIST_LENGTH=10, hidden_size=8, inner_size=16, n_layers=1)
    result = run("SASRec", DATASET, config_dict=config)
    code, _, err = cli(capsys, "--recommend", f"--checkpoint={result['model_file']}", "--users=1")
    assert code == 2 and len(err) == 1 and "holds a SASRec model" in err[0], err


# -- nothing lost or mixed up ----------------------------------------------------------------
def test_runs_started_in_the_same_second_keep_their_own_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "get_local_time", lambda: "Dec-03-2026_10-00-00")
    data = ml100k_slice(tmp_path / "data", n_users=20)
    results = [
        run("Hydra", DATASET, config_dict=quiet_config(data, seed=seed, **TINY_HYDRA))
        for seed in (1, 2)
    ]
    files = [r["model_file"] for r in results]
    assert files[0] != files[1] and all(Path(f).is_file() for f in files)
    for result in results:  # each file holds its own run's model
        again = evaluate_checkpoint(result["model_file"])
        assert again["test_result"] == result["test_result"]
    weights = [read_checkpoint(f)["state_dict"]["item_embedding.weight"] for f in files]
    assert not torch.equal(*weights)


def test_a_save_cut_short_leaves_the_previous_checkpoint_whole(saved_run, tmp_path, monkeypatch):
    _, _, result = saved_run
    path = tmp_path / "run.pth"
    shutil.copy(result["model_file"], path)
    before = path.read_bytes()

    def killed_while_writing(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"state": 1}, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["run.pth"]
    assert read_checkpoint(path)["config"]["model"] == "Hydra"


def test_each_validated_epoch_is_written_once(tmp_path, monkeypatch):
    writes = []
    save = checkpoint.atomic_save

    def recording_save(obj, path):
        writes.append((obj["epoch"], obj["resume"]["epoch"]))
        save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", recording_save)
    data = ml100k_slice(tmp_path / "data", n_users=20)
    result = run("Hydra", DATASET, config_dict=quiet_config(data, epochs=4, **TINY_HYDRA))
    assert [newest for _, newest in writes] == list(range(result["epochs"]))
    best_epoch = read_checkpoint(result["model_file"])["epoch"]
    assert writes[-1] == (best_epoch, result["epochs"] - 1)


# -- bound to its data -----------------------------------------------------------------------
def _copy_of_data(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    inter = copy / DATASET / f"{DATASET}.inter"
    header, *rows = inter.read_text().splitlines()
    return copy, inter, header, rows


def test_the_same_data_elsewhere_evaluates_the_same(saved_run, tmp_path):
    data, _, result = saved_run
    copy, *_ = _copy_of_data(data, tmp_path)
    again = evaluate_checkpoint(result["model_file"], {"data_path": str(copy)})
    assert again["test_result"] == result["test_result"]


def test_reordered_rows_are_refused_in_one_line(saved_run, tmp_path, capsys):
    data, _, result = saved_run
    copy, inter, header, rows = _copy_of_data(data, tmp_path)
    inter.write_text("\n".join([header] + rows[::-1]) + "\n")
    code, _, err = cli(capsys, f"--checkpoint={result['model_file']}", f"--data_path={copy}")
    assert code == 2 and len(err) == 1, err
    assert "the item ids map to other internal ids" in err[0]
    assert "the user ids map to other internal ids" in err[0]


def test_added_items_are_refused_naming_the_counts(saved_run, tmp_path):
    data, _, result = saved_run
    copy, inter, header, rows = _copy_of_data(data, tmp_path)
    user, _, rating, stamp = rows[-1].split("\t")
    extra = [f"{user}\t{90000 + i}\t{rating}\t{int(float(stamp)) + 1 + i}" for i in range(3)]
    inter.write_text("\n".join([header] + rows + extra) + "\n")
    n_items = read_checkpoint(result["model_file"])["dataset"]["items"]["count"]
    with pytest.raises(UsageError) as error:
        evaluate_checkpoint(result["model_file"], {"data_path": str(copy)})
    assert f"{n_items} items then, {n_items + 3} now" in str(error.value)
    assert f"{len(rows)} interactions then, {len(rows) + 3} now" in str(error.value)


# -- evaluation options of a saved model -----------------------------------------------------
def test_checkpoint_evaluation_honours_evaluation_only_overrides(saved_run, capsys):
    _, _, result = saved_run
    code, out, _ = cli(
        capsys,
        f"--checkpoint={result['model_file']}",
        "--topk=[5]",
        "--metrics=['Recall','MRR']",
        "--valid_metric=MRR@5",
        "--eval_batch_size=7",
    )
    assert code == 0 and out.splitlines()[0] == "| split | recall@5 | mrr@5 |", out
    code, _, err = cli(capsys, f"--checkpoint={result['model_file']}", "--hidden_size=8")
    assert code == 2 and len(err) == 1 and "--hidden_size cannot be changed" in err[0], err


# -- resume ----------------------------------------------------------------------------------
def test_a_resumed_run_ends_exactly_as_the_uninterrupted_one(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(data, epochs=4, checkpoint_dir=str(tmp_path / "whole"), **TINY_HYDRA)
    whole = run("Hydra", DATASET, config_dict=config)

    def ctrl_c_in_third_validation(epoch, entry, trainer):
        if epoch == 3:
            raise KeyboardInterrupt

    config["checkpoint_dir"] = str(tmp_path / "cut")
    with pytest.raises(TrainingInterrupted) as stop:
        run("Hydra", DATASET, config_dict=config, epoch_callback=ctrl_c_in_third_validation)
    assert stop.value.epoch == 1 and Path(stop.value.checkpoint).is_file()
    resumed = resume(stop.value.checkpoint)
    assert resumed["model_file"] == stop.value.checkpoint and resumed["epochs"] == 2
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    ends = [read_checkpoint(r["model_file"]) for r in (whole, resumed)]
    newest = [e["resume"]["state_dict"] or e["state_dict"] for e in ends]  # None: the best
    for a, b in ([e["state_dict"] for e in ends], newest):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ends[0]["resume"]["lr_scheduler"] == ends[1]["resume"]["lr_scheduler"]


def test_resume_refuses_a_change_of_what_was_trained(saved_run, capsys):
    _, _, result = saved_run
    with pytest.raises(UsageError, match="--hidden_size cannot be changed"):
        resume(result["model_file"], {"hidden_size": 8})
    code, _, err = cli(capsys, f"--resume_from={result['model_file']}", "--n_layers=3")
    assert code == 2 and len(err) == 1 and "--n_layers cannot be changed" in err[0], err


def test_ctrl_c_names_the_checkpoint_and_the_run_resumes_from_it(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    saved = tmp_path / "saved"
    flags = [f"--{k}={v}" for k, v in TINY_HYDRA.items()] + [
        f"--data_path={data}",
        f"--dataset={DATASET}",
        f"--checkpoint_dir={saved}",
        "--show_progress=False",
        "--state=ERROR",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
    ]
    command = [sys.executable, str(REPO / "run_hydra.py")]
    proc = subprocess.Popen(
        # no early stopping: the run lasts until the signal, however slowly this machine runs
        command + flags + ["--epochs=100000", "--stopping_step=100000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell starts a background job with SIGINT ignored, and Python then never turns it
        # into KeyboardInterrupt: the child gets the default back, as a terminal's Ctrl-C has it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    while proc.poll() is None and not list(saved.glob("*.pth")):
        time.sleep(0.2)  # until the first epoch's state is written
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "the last good checkpoint is" in last and "--resume_from=" in last, err
    model_file = last.split("--resume_from=")[1]
    epoch = read_checkpoint(model_file)["resume"]["epoch"]
    again = subprocess.run(
        command + [f"--resume_from={model_file}", f"--epochs={epoch + 2}", "--state=ERROR"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "| test |" in again.stdout and f"checkpoint: {model_file}" in again.stdout
    assert read_checkpoint(model_file)["resume"]["epoch"] == epoch + 1
