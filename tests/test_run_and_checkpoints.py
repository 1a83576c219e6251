"""quick_start.run, checkpoints, the compat shims and RecBole's own inference helpers."""

import pytest
import recbole.quick_start
import recbole.utils
import torch
from recbole.utils.case_study import full_sort_topk

from recbole_hydra import checkpoint
from recbole_hydra.checkpoint import read_checkpoint
from recbole_hydra.model.hydra import Hydra
from recbole_hydra.quick_start import evaluate_checkpoint, run
from tests import conftest
from tests.conftest import ml100k_slice, quiet_config

# conftest's tiny Hydra with more negatives and windows of 20
TINY_HYDRA = dict(conftest.TINY_HYDRA, num_negatives=32, MAX_ITEM_LIST_LENGTH=20)
METRICS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 50, 200)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short Hydra run on 60 users of ml-100k, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("e2e")
    data = ml100k_slice(root / "data")
    config = quiet_config(data, epochs=2, checkpoint_dir=str(root / "saved"), **TINY_HYDRA)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = run("Hydra", "ml-100k-slice", config_dict=config)
    return result, config


def test_run_trains_saves_and_tests(trained):
    result, _ = trained
    assert set(result["test_result"]) == METRICS and set(result["best_valid_result"]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    assert result["epochs"] == 2 and all(h["train_s"] > 0 for h in result["history"])
    assert result["n_params"] > 0
    assert result["stopped_early"] is False  # 2 epochs, patience 10: it ran to its cap
    assert torch.load(result["model_file"], weights_only=True)["config"]["model"] == "Hydra"


def test_run_says_when_early_stopping_ended_it(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    # patience 0: the first validation below the best ends the run
    config = quiet_config(data, epochs=40, stopping_step=0, learning_rate=0.01, **TINY_HYDRA)
    result = run("Hydra", "ml-100k-slice", config_dict=config, saved=False)
    scores = [h["valid_score"] for h in result["history"]]
    assert result["stopped_early"] is True and result["epochs"] < 40
    assert scores[-1] < max(scores[:-1]) and scores[:-1] == sorted(scores[:-1])


def test_lr_schedule_warms_up_then_decays_to_zero(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(data, epochs=3, train_batch_size=8, warmup_ratio=0.2, **TINY_HYDRA)
    from recbole_hydra.trainer import GenerativeTrainer

    seen = []
    original = GenerativeTrainer._train_epoch

    def spy(self, *args, **kwargs):
        seen.append(self.optimizer.param_groups[0]["lr"])
        out = original(self, *args, **kwargs)
        seen.append(self.optimizer.param_groups[0]["lr"])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GenerativeTrainer, "_train_epoch", spy)
        run("Hydra", "ml-100k-slice", config_dict=config, saved=False)
    peak = config.get("learning_rate", 1e-3)
    assert seen[0] < peak  # still warming up when training starts
    assert max(seen) <= peak * (1 + 1e-9)
    assert seen[-1] < 0.05 * peak  # cosine decayed to (almost) zero by the last step


def test_time_budget_stops_inside_an_epoch_and_keeps_its_checkpoint(tmp_path):
    """An epoch longer than the budget is cut between two batches; the partial epoch is validated,
    saved and tested, and no further epoch starts."""
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(
        data,
        epochs=5,
        train_batch_size=2,
        time_budget_s=0.0,
        checkpoint_dir=str(tmp_path / "saved"),
        **TINY_HYDRA,
    )
    losses = []
    original = Hydra.calculate_loss

    def counting(self, interaction):
        losses.append(1)
        return original(self, interaction)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Hydra, "calculate_loss", counting)
        result = run("Hydra", "ml-100k-slice", config_dict=config)
    (entry,) = result["history"]
    assert entry["batches"] == len(losses) == 1 and entry["batches_per_epoch"] > 1
    assert "valid_score" in entry and set(result["test_result"]) == METRICS
    assert torch.load(result["model_file"], weights_only=True)["config"]["model"] == "Hydra"


def test_time_budget_lets_epochs_that_fit_run_whole(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(data, epochs=2, time_budget_s=3600.0, **TINY_HYDRA)
    result = run("Hydra", "ml-100k-slice", config_dict=config, saved=False)
    assert result["epochs"] == 2 and not any("batches" in h for h in result["history"])


def test_checkpoint_reevaluates_to_the_same_test_result(trained):
    result, _ = trained
    again = evaluate_checkpoint(result["model_file"], show_progress=False)
    assert again["test_result"] == result["test_result"]


def test_recbole_load_data_and_model_and_full_sort_topk(trained):
    result, _ = trained
    config, model, dataset, train, valid, test = recbole.quick_start.load_data_and_model(
        result["model_file"]
    )
    assert isinstance(model, Hydra)
    saved = torch.load(result["model_file"], weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    uid_series = dataset.token2id(dataset.uid_field, ["1", "2"])
    model.eval()
    scores, items = full_sort_topk(uid_series, model, test, k=5, device=config["device"])
    assert items.shape == (2, 5)
    # the top-5 RecBole returns are the model's own best scores for those users
    interaction = test.dataset.inter_feat[
        torch.isin(test.dataset.inter_feat["user_id"], torch.as_tensor(uid_series))
    ]
    with torch.no_grad():
        direct = model.full_sort_predict(interaction)
    direct[:, 0] = -torch.inf
    torch.testing.assert_close(scores.sort(-1).values, direct.topk(5).values.sort(-1).values)


def test_shim_trainer_reads_and_writes_the_packages_checkpoints(trained):
    """RecBole's trainer saves the package's format (plain data: torch.load's safe mode reads it)
    and reads checkpoints through the package's reader."""
    result, _ = trained
    raw = torch.load(result["model_file"], weights_only=True)
    assert raw["format"] == checkpoint.FORMAT and raw["config"]["model"] == "Hydra"
    assert read_checkpoint(result["model_file"])["config"]["model"] == "Hydra"
    import recbole.trainer.trainer as trainer_module

    assert trainer_module.torch.load is read_checkpoint
    assert trainer_module.torch.nn is torch.nn  # everything else is torch itself
    assert trainer_module.Trainer._save_checkpoint is checkpoint.save_trainer_checkpoint
    assert trainer_module.Trainer.resume_checkpoint is checkpoint.resume_trainer


def test_recbole_loader_imported_before_the_plugin_reloads_a_checkpoint(trained, tmp_path):
    """``from recbole.quick_start import load_data_and_model`` before ``import recbole_hydra``
    holds RecBole's own function: its module's torch.load must read the checkpoint too."""
    result, _ = trained
    script = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from recbole.quick_start import load_data_and_model\n"
        "import recbole_hydra\n"
        "config, model, *_ = load_data_and_model(sys.argv[1])\n"
        "print(type(model).__name__)\n"
    )
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", script, result["model_file"], repo],
        capture_output=True,
        text=True,
        cwd=Path(result["model_file"]).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "Hydra"


def test_shim_plugin_models_resolve_in_recbole():
    """RecBole's get_model only knows recbole.model; its quick_start module now finds plugins."""
    with pytest.raises((ValueError, ImportError)):  # ImportError: it imports exlib (lightgbm)
        recbole.utils.get_model("Hydra")
    import recbole.quick_start.quick_start as qs

    assert qs.get_model("Hydra") is Hydra
    assert qs.get_model("SASRec").__name__ == "SASRec"
    assert recbole.quick_start.load_data_and_model is checkpoint.load_data_and_model


def test_recbole_model_runs_the_same_way(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=40)
    config = quiet_config(data, MAX_ITEM_LIST_LENGTH=10, hidden_size=16, inner_size=32, n_layers=1)
    result = run("SASRec", "ml-100k-slice", config_dict=config)
    assert set(result["test_result"]) == METRICS
    assert torch.load(result["model_file"], weights_only=True)["config"]["model"] == "SASRec"


def test_pairwise_recbole_model_gets_recboles_negative_sampling_back(tmp_path):
    """overall.yaml turns RecBole's training negatives off (the models here sample their own);
    a pairwise RecBole model such as BPR needs them and gets RecBole's default."""
    data = ml100k_slice(tmp_path / "data", n_users=40)
    result = run(
        "BPR", "ml-100k-slice", config_dict=quiet_config(data, embedding_size=8), saved=False
    )
    assert set(result["test_result"]) == METRICS
