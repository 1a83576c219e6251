"""What is particular to Mamba4Rec; the contract every model keeps is in test_model_contract.py."""

import pytest
import torch
import torch.nn.functional as F

from recbole_hydra.model.mamba4rec import Mamba4Rec
from recbole_hydra.quick_start import run
from tests.conftest import ml100k_slice, quiet_config
from tests.model_helpers import build_model

SMALL = dict(hidden_size=16, n_layers=2, d_state=8, chunk_size=4, dropout_prob=0.0)


def test_defaults_follow_the_paper(tmp_path):
    model, train, _, _ = build_model(tmp_path, "Mamba4Rec")
    assert isinstance(model, Mamba4Rec)
    objective = (model.train_mode, model.loss_type, model.similarity, model.temperature)
    assert objective == ("prefix", "CE", "dot", 1.0)
    (layer,) = model.layers  # one layer, no residual around the Mamba block
    assert not layer.residual
    mamba = layer.mamba
    assert (mamba.d_model, mamba.d_state, mamba.d_conv, mamba.d_inner) == (64, 32, 4, 128)
    assert layer.ffn.dense_1.out_features == 256 and model.max_seq_length == 50
    # reference init: N(0, 0.02) linears, the Mamba block's dt_proj bias zeroed
    assert torch.equal(layer.mamba.dt_proj.bias, torch.zeros(128))
    assert layer.mamba.in_proj.weight.std() < 0.03


def test_mamba_ssm_init_kept_when_asked(tmp_path):
    model, _, _, _ = build_model(tmp_path, "Mamba4Rec", reference_init=False, **SMALL)
    dt = F.softplus(model.layers[0].mamba.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert model.layers[0].ffn.dense_1.weight.std() < 0.03  # the rest is still the reference's


@pytest.mark.parametrize("train_mode", ["prefix", "generative"])
def test_quick_start_run_on_ml100k_slice(tmp_path, train_mode):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(
        data,
        hidden_size=16,
        d_state=8,
        MAX_ITEM_LIST_LENGTH=20,
        train_batch_size=256,
        train_mode=train_mode,
    )
    result = run("Mamba4Rec", "ml-100k-slice", config_dict=config, saved=False)
    for metric in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
        assert 0.0 <= result["test_result"][metric] <= 1.0
    assert result["epochs"] == 1
