"""What is particular to Hydra; the contract every model keeps is in test_model_contract.py."""

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_hydra.model.hydra import Hydra
from tests.model_helpers import build_model, random_batch

SMALL = dict(
    hidden_size=16,
    n_layers=2,
    n_heads=2,
    d_state=8,
    chunk_size=4,
    num_negatives=16,
    dropout_prob=0.0,
)


@pytest.fixture
def hydra(tmp_path):
    return build_model(tmp_path, "Hydra", **SMALL)


def test_scores_use_the_last_real_position(hydra):
    # full_sort_predict computes only the last position in the last layer: same scores as
    # scoring forward's output there
    model = hydra[0].double().eval()
    seq, lengths = random_batch(model)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    query = model(seq, lengths)[torch.arange(len(seq)), lengths - 1]
    expected = (
        torch.nn.functional.normalize(query, dim=-1)
        @ torch.nn.functional.normalize(model.item_embedding.weight, dim=-1).T
        / model.temperature
    )
    torch.testing.assert_close(
        model.full_sort_predict(batch).double(), expected, rtol=1e-9, atol=1e-9
    )


def test_evaluation_in_row_blocks_gives_the_same_scores(hydra):
    model = hydra[0].eval()
    seq, lengths = random_batch(model, batch=5)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    with torch.no_grad():
        whole = model.full_sort_predict(batch)
        model.eval_tokens_per_pass = 2 * seq.size(1)  # two rows per pass: blocks of 2, 2, 1
        blocks = model.full_sort_predict(batch)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)


def test_explicit_head_size_may_differ_from_hidden_size(tmp_path):
    model, train, _, _ = build_model(tmp_path, "Hydra", **{**SMALL, "head_size": 6})
    assert isinstance(model, Hydra)
    batch = next(iter(train))
    assert model(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]).shape[-1] == 16


def test_layer_checkpointing_same_loss_and_gradients_less_kept(tmp_path):
    """``layer_checkpointing`` recomputes the layers in backward: the same loss and gradients
    (dropout included: the recomputation replays the same random draws), and autograd keeps
    less for backward."""
    model, train, _, _ = build_model(
        tmp_path, "Hydra", **{**SMALL, "dropout_prob": 0.3, "hidden_dropout_prob": 0.2}
    )
    model = model.double().train()
    batch = next(iter(train))
    results = []
    for flag in (False, True):
        model.layer_checkpointing = flag
        model.zero_grad()
        kept = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        torch.manual_seed(3)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.calculate_loss(batch)
        loss.backward()
        results.append(
            (loss.detach(), [p.grad.clone() for p in model.parameters()], sum(kept.values()))
        )
    (loss, grads, kept), (loss_ckpt, grads_ckpt, kept_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-12, atol=1e-12)
    for g_ckpt, g in zip(grads_ckpt, grads):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-10, atol=1e-12)
    assert kept_ckpt < kept / 2, (kept_ckpt, kept)
