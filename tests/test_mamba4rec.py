import pytest
import torch
import torch.nn.functional as F

from recbole_hydra.model.mamba4rec import Mamba4Rec
from recbole_hydra.quick_start import run
from tests.conftest import ml100k_slice, quiet_config
from tests.model_helpers import (
    assert_causal,
    assert_gradients_reach_every_parameter,
    assert_padding_invariant,
    build_model,
    overfit_recall_at_1,
)

SMALL = dict(hidden_size=16, n_layers=2, d_state=8, chunk_size=4, dropout_prob=0.0)
FIXED_ROWS = [(f"u{u}", f"i{(u * 7 + t * 3) % 40}", t) for u in range(20) for t in range(6)]


@pytest.fixture(params=["prefix", "generative"])
def mamba4rec(tmp_path, request):
    return build_model(tmp_path, "Mamba4Rec", train_mode=request.param, **SMALL)


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


def test_shapes(mamba4rec):
    model, train, _, _ = mamba4rec
    batch = next(iter(train))
    seq = batch[model.ITEM_SEQ]
    assert model(seq, batch[model.ITEM_SEQ_LEN]).shape == (*seq.shape, 16)
    assert model.full_sort_predict(batch).shape == (len(batch), model.n_items)
    assert model.calculate_loss(batch).dim() == 0


def test_causal(mamba4rec):
    assert_causal(mamba4rec[0])


def test_right_padding_invariant(mamba4rec):
    assert_padding_invariant(mamba4rec[0])


def test_gradients_flow_everywhere(mamba4rec):
    assert_gradients_reach_every_parameter(mamba4rec[0], mamba4rec[1])


@pytest.mark.parametrize("overrides", [
    dict(),  # the paper's: prefix examples, full softmax CE, dot product
    dict(train_mode="generative", loss_type="InfoNCE", similarity="cosine", temperature=0.05,
         num_negatives=64),
])
def test_overfits_20_short_sequences(tmp_path, overrides):
    model, train, _, _ = build_model(
        tmp_path, "Mamba4Rec", rows=FIXED_ROWS, hidden_size=32, n_layers=1, d_state=8,
        dropout_prob=0.0, MAX_ITEM_LIST_LENGTH=10, train_batch_size=20, **overrides)
    assert overfit_recall_at_1(model, train, steps=200) >= 0.95


@pytest.mark.parametrize("train_mode", ["prefix", "generative"])
def test_quick_start_run_on_ml100k_slice(tmp_path, train_mode):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(data, hidden_size=16, d_state=8, MAX_ITEM_LIST_LENGTH=20, train_batch_size=256,
                          train_mode=train_mode)
    result = run("Mamba4Rec", "ml-100k-slice", config_dict=config, saved=False)
    for metric in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
        assert 0.0 <= result["test_result"][metric] <= 1.0
    assert result["epochs"] == 1
