import pytest
import torch

from recbole_hydra.model.hydra import Hydra
from tests.model_helpers import (
    assert_causal,
    assert_gradients_reach_every_parameter,
    assert_padding_invariant,
    build_model,
    overfit_recall_at_1,
)

SMALL = dict(hidden_size=16, n_layers=2, n_heads=2, d_state=8, chunk_size=4, num_negatives=16,
             dropout_prob=0.0)


@pytest.fixture
def hydra(tmp_path):
    return build_model(tmp_path, "Hydra", **SMALL)


def test_shapes(hydra):
    model, train, _, _ = hydra
    assert isinstance(model, Hydra)
    batch = next(iter(train))
    seq = batch[model.ITEM_SEQ]
    assert model(seq, batch[model.ITEM_SEQ_LEN]).shape == (*seq.shape, 16)
    assert model.full_sort_predict(batch).shape == (len(batch), model.n_items)
    assert model.calculate_loss(batch).dim() == 0


def test_scores_use_the_last_real_position(hydra):
    # full_sort_predict computes only the last position in the last layer: same scores as
    # scoring forward's output there
    model = hydra[0].double().eval()
    from tests.model_helpers import random_batch
    from recbole.data.interaction import Interaction

    seq, lengths = random_batch(model)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    query = model(seq, lengths)[torch.arange(len(seq)), lengths - 1]
    expected = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(
        model.item_embedding.weight, dim=-1).T / model.temperature
    torch.testing.assert_close(model.full_sort_predict(batch).double(), expected, rtol=1e-9, atol=1e-9)


def test_evaluation_in_row_blocks_gives_the_same_scores(hydra):
    model = hydra[0].eval()
    from tests.model_helpers import random_batch
    from recbole.data.interaction import Interaction

    seq, lengths = random_batch(model, batch=5)
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths})
    with torch.no_grad():
        whole = model.full_sort_predict(batch)
        model.eval_tokens_per_pass = 2 * seq.size(1)  # two rows per pass: blocks of 2, 2, 1
        blocks = model.full_sort_predict(batch)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)


def test_causal(hydra):
    assert_causal(hydra[0])


def test_right_padding_invariant(hydra):
    assert_padding_invariant(hydra[0])


def test_gradients_flow_everywhere(hydra):
    assert_gradients_reach_every_parameter(hydra[0], hydra[1])


@pytest.mark.parametrize("loss_type,similarity", [("InfoNCE", "cosine"), ("CE", "dot")])
def test_overfits_20_short_sequences(tmp_path, loss_type, similarity):
    # 20 users with fixed short sequences; every training target ranked first after training
    rows = [(f"u{u}", f"i{(u * 7 + t * 3) % 40}", t) for u in range(20) for t in range(6)]
    temperature = 0.05 if similarity == "cosine" else 1.0
    model, train, _, _ = build_model(
        tmp_path, "Hydra", rows=rows, hidden_size=32, n_layers=1, n_heads=2, d_state=8,
        chunk_size=4, dropout_prob=0.0, loss_type=loss_type, similarity=similarity,
        temperature=temperature, num_negatives=64, exclude_history_negatives=False,
        train_batch_size=20)
    assert overfit_recall_at_1(model, train) >= 0.95


def test_hidden_size_not_divisible_by_heads(tmp_path):
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        build_model(tmp_path, "Hydra", hidden_size=30, n_heads=4)


def test_explicit_head_size_may_differ_from_hidden_size(tmp_path):
    model, train, _, _ = build_model(tmp_path, "Hydra", **{**SMALL, "head_size": 6})
    batch = next(iter(train))
    assert model(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]).shape[-1] == 16


def test_layer_checkpointing_same_loss_and_gradients_less_kept(tmp_path):
    """``layer_checkpointing`` recomputes the layers in backward: the same loss and gradients
    (dropout included: the recomputation replays the same random draws), and autograd keeps
    less for backward."""
    model, train, _, _ = build_model(tmp_path, "Hydra", **{**SMALL, "dropout_prob": 0.3, "hidden_dropout_prob": 0.2})
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
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], sum(kept.values())))
    (loss, grads, kept), (loss_ckpt, grads_ckpt, kept_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-12, atol=1e-12)
    for g_ckpt, g in zip(grads_ckpt, grads):
        torch.testing.assert_close(g_ckpt, g, rtol=1e-10, atol=1e-12)
    assert kept_ckpt < kept / 2, (kept_ckpt, kept)
