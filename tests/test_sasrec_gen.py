"""What is particular to SASRecGen; the contract every model keeps is in test_model_contract.py."""

import pytest
import torch

from recbole_hydra.model.sasrec_gen import SASRecGen
from tests.model_helpers import build_model

SMALL = dict(
    hidden_size=16,
    n_layers=2,
    n_heads=2,
    inner_size=32,
    hidden_dropout_prob=0.0,
    attn_dropout_prob=0.0,
)


@pytest.fixture
def sasrec_gen(tmp_path):
    return build_model(tmp_path, "SASRecGen", num_negatives=16, **SMALL)


def test_defaults(sasrec_gen):
    model = sasrec_gen[0]
    assert isinstance(model, SASRecGen)
    assert (model.train_mode, model.loss_type, model.similarity, model.temperature) == (
        "generative",
        "InfoNCE",
        "cosine",
        0.05,
    )


def test_attention_matches_an_explicit_causal_softmax(sasrec_gen):
    # the fused kernel computes softmax(q k^T / sqrt(d) + causal mask) v
    layer = sasrec_gen[0].layers[0].double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x).view(3, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 7, 16)
    h = layer.attn_norm(x + layer.attn_out(attn))
    torch.testing.assert_close(layer(x), layer.ffn_norm(h + layer.ffn(h)))
