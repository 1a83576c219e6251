"""Building a plugin model on a toy dataset, and the behaviours every sequence model must have."""

import torch
from recbole.data import data_preparation

from recbole_hydra import registry
from recbole_hydra.config import make_config
from recbole_hydra.registry import create_dataset
from tests.conftest import quiet_config, random_sequences, write_inter

# Small two-layer models for model-level tests; dropout off so outputs are deterministic.
SMALL_HYDRA = dict(
    hidden_size=16,
    n_layers=2,
    n_heads=2,
    d_state=8,
    chunk_size=4,
    num_negatives=16,
    dropout_prob=0.0,
)
SMALL_HSTU = dict(
    hidden_size=16,
    n_layers=2,
    n_heads=2,
    dropout_prob=0.0,
    hidden_dropout_prob=0.0,
    num_negatives=16,
)


def build_model(
    tmp_path, model, n_users=20, n_items=30, min_len=3, max_len=12, rows=None, **overrides
):
    root = write_inter(
        tmp_path / "data", "toy", rows or random_sequences(n_users, n_items, min_len, max_len)
    )
    config = make_config(model, "toy", config_dict=quiet_config(root, **overrides))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return registry.build_model(config, train._dataset), train, valid, test


def random_batch(model, batch=4, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, model.n_items, (batch, length), generator=g)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    lengths[0] = length
    seq[torch.arange(length).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return seq, lengths


def assert_causal(model, **inputs):
    """Changing the item at t + 1 never changes the output at positions <= t."""
    model.eval()
    seq, lengths = random_batch(model)
    out = model(seq, lengths, **inputs)
    for t in range(seq.size(1) - 1):
        changed = seq.clone()
        changed[:, t + 1] = (changed[:, t + 1] % (model.n_items - 1)) + 1
        out2 = model(changed, lengths, **inputs)
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :])


def assert_padding_invariant(model, **inputs):
    """Whatever sits after the real items (RecBole right-pads) never changes real outputs."""
    model.eval()
    seq, lengths = random_batch(model)
    out = model(seq, lengths, **inputs)
    junk = seq.clone()
    pad = torch.arange(seq.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    junk[pad] = torch.randint(1, model.n_items, (int(pad.sum()),))
    out2 = model(junk, lengths, **inputs)
    real = ~pad
    torch.testing.assert_close(out2[real], out[real], rtol=1e-5, atol=1e-5)
    longer = torch.nn.functional.pad(seq, (0, 7))  # more padding at the end
    out3 = model(
        longer, lengths, **{k: torch.nn.functional.pad(v, (0, 7)) for k, v in inputs.items()}
    )
    torch.testing.assert_close(out3[:, : seq.size(1)][real], out[real], rtol=1e-5, atol=1e-5)


def assert_gradients_reach_every_parameter(model, train):
    model.train()
    batch = next(iter(train))
    model.zero_grad()
    model.calculate_loss(batch).backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, f"no gradient reaches {missing}"


def overfit_recall_at_1(model, train, steps=80, lr=1e-2, targets_of=None):
    """Train on the training batches alone, then the fraction of training targets ranked first.

    ``targets_of(model, batch) -> (interaction, targets)`` says what to score for a training batch
    (default: the batch itself and its ``POS_ITEM_ID``)."""
    if targets_of is None:
        targets_of = lambda model, batch: (batch, batch[model.POS_ITEM_ID])  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = list(train)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        model.calculate_loss(batches[step % len(batches)]).backward()
        opt.step()
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for batch in batches:
            interaction, targets = targets_of(model, batch)
            scores = model.full_sort_predict(interaction)
            hits += int((scores.argmax(-1) == targets).sum())
            total += len(targets)
    return hits / total
