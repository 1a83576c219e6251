"""mask_history_items: the items of the user's input sequence leave the ranking, the target
stays; checked against a brute-force ranking written here, for a plugin and a RecBole model."""

import math

import numpy as np
import pytest
import torch

from recbole_hydra.checkpoint import load_data_and_model
from recbole_hydra.training import evaluate_checkpoint, run
from tests.conftest import quiet_config, write_inter
from tests.test_run_and_checkpoints import TINY_HYDRA

MODELS = {
    "Hydra": TINY_HYDRA,
    "SASRec": dict(MAX_ITEM_LIST_LENGTH=20, hidden_size=16, inner_size=32, n_layers=1),
}
KS = (5, 10, 50)


def distinct_sequences(n_users=40, n_items=60, min_len=6, max_len=20, seed=0):
    """Each user's items all different: masking can only lift the target."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.permutation(n_items)[: int(rng.integers(min_len, max_len + 1))]
        rows += [(f"u{u}", f"i{int(i)}", 1000 * u + t) for t, i in enumerate(items)]
    return rows


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"mask-{request.param}")
    data = write_inter(root / "data", "distinct", distinct_sequences())
    config = quiet_config(
        data,
        epochs=2,
        topk=list(KS),
        valid_metric="NDCG@10",
        checkpoint_dir=str(root / "saved"),
        **MODELS[request.param],
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = run(request.param, "distinct", config_dict=config)
    return result


def brute_force_test_metrics(model_file, mask):
    """Recall and NDCG@K from each test row's full score vector, ranked by counting."""
    config, model, _, _, _, test_data = load_data_and_model(model_file)
    model.eval()
    sequence_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    hits = {k: [] for k in KS}
    gains = {k: [] for k in KS}
    with torch.no_grad():
        for interaction, _, _, _ in test_data:
            scores = model.full_sort_predict(interaction).double()
            for row in range(len(scores)):
                target = int(interaction[config["ITEM_ID_FIELD"]][row])
                candidates = [
                    item
                    for item in range(1, scores.shape[1])
                    if item == target or not (mask and item in interaction[sequence_field][row])
                ]
                rank = sum(1 for i in candidates if scores[row, i] > scores[row, target])
                for k in KS:
                    hits[k].append(float(rank < k))
                    gains[k].append(1.0 / math.log2(rank + 2) if rank < k else 0.0)
    metrics = {f"recall@{k}": np.mean(hits[k]) for k in KS}
    metrics.update({f"ndcg@{k}": np.mean(gains[k]) for k in KS})
    return metrics


@pytest.mark.parametrize("mask", [False, True])
def test_evaluation_equals_a_brute_force_ranking(trained, mask):
    result = evaluate_checkpoint(trained["model_file"], {"mask_history_items": mask})
    expected = brute_force_test_metrics(trained["model_file"], mask)
    for name, value in expected.items():
        assert result["test_result"][name] == pytest.approx(value, abs=1e-4), name


def test_masked_scores_are_never_below_unmasked_without_repeats(trained):
    plain = evaluate_checkpoint(trained["model_file"])["test_result"]
    masked = evaluate_checkpoint(trained["model_file"], {"mask_history_items": True})
    assert all(masked["test_result"][m] >= plain[m] for m in plain)
    assert any(masked["test_result"][m] > plain[m] for m in plain)  # the history did rank


def test_a_repeated_target_stays_rankable(tmp_path):
    """Every user's test item is one already in their sequence: masking must keep it."""
    rows = []
    for u in range(30):
        items = [f"i{(u + t) % 50}" for t in range(8)]
        items.append(items[2])  # the test target repeats an earlier item
        rows += [(f"u{u}", item, 1000 * u + t) for t, item in enumerate(items)]
    data = write_inter(tmp_path / "data", "repeat", rows)
    config = quiet_config(data, epochs=1, topk=[30], valid_metric="NDCG@30", **TINY_HYDRA)
    result = run("Hydra", "repeat", config_dict=config)
    masked = evaluate_checkpoint(result["model_file"], {"mask_history_items": True})
    # 37 items, 7 of each user's masked: the target is always among the 30 left, if it is kept
    assert masked["test_result"]["recall@30"] == 1.0
