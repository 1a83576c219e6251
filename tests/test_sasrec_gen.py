import pytest
import torch

from recbole_hydra.model.sasrec_gen import SASRecGen
from recbole_hydra.errors import UsageError
from tests.model_helpers import (
    assert_causal,
    assert_gradients_reach_every_parameter,
    assert_padding_invariant,
    build_model,
    overfit_recall_at_1,
)

SMALL = dict(hidden_size=16, n_layers=2, n_heads=2, inner_size=32, hidden_dropout_prob=0.0,
             attn_dropout_prob=0.0)


@pytest.fixture
def sasrec_gen(tmp_path):
    return build_model(tmp_path, "SASRecGen", num_negatives=16, **SMALL)


def test_shapes_and_defaults(sasrec_gen):
    model, train, _, _ = sasrec_gen
    assert isinstance(model, SASRecGen) and model.train_mode == "generative"
    batch = next(iter(train))
    seq = batch[model.ITEM_SEQ]
    assert model(seq, batch[model.ITEM_SEQ_LEN]).shape == (*seq.shape, 16)
    assert model.full_sort_predict(batch).shape == (len(batch), model.n_items)


def test_causal(sasrec_gen):
    assert_causal(sasrec_gen[0])


def test_right_padding_invariant(sasrec_gen):
    assert_padding_invariant(sasrec_gen[0])


def test_gradients_flow_everywhere(sasrec_gen):
    assert_gradients_reach_every_parameter(sasrec_gen[0], sasrec_gen[1])


def test_attention_matches_an_explicit_causal_softmax(sasrec_gen):
    # the fused kernel computes softmax(q k^T / sqrt(d) + causal mask) v
    layer = sasrec_gen[0].layers[0].double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x).view(3, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 7, 16)
    h = layer.attn_norm(x + layer.attn_out(attn))
    torch.testing.assert_close(layer(x), layer.ffn_norm(h + layer.ffn(h)))


def test_overfits_20_short_sequences(tmp_path):
    # 20 users with fixed short sequences; every training target ranked first after training
    rows = [(f"u{u}", f"i{(u * 7 + t * 3) % 40}", t) for u in range(20) for t in range(6)]
    model, train, _, _ = build_model(
        tmp_path, "SASRecGen", rows=rows, **{**SMALL, "hidden_size": 32, "n_layers": 1},
        num_negatives=64, exclude_history_negatives=False, train_batch_size=20)
    assert overfit_recall_at_1(model, train) >= 0.95


def test_hidden_size_not_divisible_by_heads(tmp_path):
    with pytest.raises((ValueError, UsageError), match="not divisible"):
        build_model(tmp_path, "SASRecGen", **{**SMALL, "n_heads": 3})
