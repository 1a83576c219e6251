import math

import pytest
import torch

from recbole_hydra.layers.losses import (
    full_softmax_loss,
    history_membership,
    sampled_softmax_loss,
)


def reference_infonce(query, pos, neg, tau, similarity, mask):
    """Eq 15 term by term in float64."""
    total = 0.0
    for i in range(query.size(0)):

        def score(a, b):
            a, b = a.double(), b.double()
            if similarity == "cosine":
                a, b = a / a.norm(), b / b.norm()
            return float(a @ b) / tau

        s_pos = score(query[i], pos[i])
        denom = math.exp(s_pos) + sum(
            math.exp(score(query[i], neg[k])) for k in range(neg.size(0)) if not mask[i, k]
        )
        total += -(s_pos - math.log(denom))
    return total / query.size(0)


@pytest.mark.parametrize("similarity,tau", [("cosine", 0.05), ("dot", 1.0), ("dot", 0.3)])
def test_sampled_softmax_equals_direct_float64(similarity, tau):
    g = torch.Generator().manual_seed(0)
    q, p, n = (
        torch.randn(7, 5, generator=g),
        torch.randn(7, 5, generator=g),
        torch.randn(11, 5, generator=g),
    )
    mask = torch.rand(7, 11, generator=g) < 0.3
    got = sampled_softmax_loss(q.double(), p.double(), n.double(), tau, similarity, mask)
    assert got.item() == pytest.approx(reference_infonce(q, p, n, tau, similarity, mask), rel=1e-6)


def test_masked_negative_does_not_count():
    g = torch.Generator().manual_seed(1)
    p, n = torch.randn(1, 4, generator=g), torch.randn(5, 4, generator=g)
    q = p + 0.1 * torch.randn(1, 4, generator=g)  # a query near its positive: the copy would matter
    with_copy = torch.cat([n, p])  # the row's positive appears among the negatives
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 5] = True
    masked = sampled_softmax_loss(q, p, with_copy, 0.05, "cosine", mask)
    assert masked.item() == pytest.approx(
        sampled_softmax_loss(q, p, n, 0.05, "cosine").item(), rel=1e-5
    )
    assert sampled_softmax_loss(q, p, with_copy, 0.05, "cosine").item() > masked.item()


def test_finite_under_bf16_autocast_at_small_temperature():
    g = torch.Generator().manual_seed(2)
    layer = torch.nn.Linear(16, 16)
    x, p, n = (
        torch.randn(64, 16, generator=g) * 30,
        torch.randn(64, 16, generator=g),
        torch.randn(512, 16, generator=g),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = layer(x)
        assert q.dtype == torch.bfloat16
        for similarity in ("cosine", "dot"):
            loss = sampled_softmax_loss(q, p, n, 0.05, similarity)
            assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    ref = sampled_softmax_loss(layer(x).float(), p, n, 0.05, "cosine")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sampled_softmax_loss(layer(x), p, n, 0.05, "cosine").item() == pytest.approx(
            ref.item(), rel=0.05
        )


def test_full_softmax_equals_direct_float64():
    g = torch.Generator().manual_seed(3)
    q, table = torch.randn(4, 3, generator=g).double(), torch.randn(9, 3, generator=g).double()
    target = torch.tensor([1, 8, 3, 3])
    expected = 0.0
    for i in range(4):
        logits = [float(q[i] @ table[j]) / 0.5 for j in range(9)]
        expected += math.log(sum(math.exp(v) for v in logits)) - logits[target[i]]
    assert full_softmax_loss(q, table, target, 0.5, "dot").item() == pytest.approx(
        expected / 4, rel=1e-9
    )


def test_history_membership_matches_sets():
    g = torch.Generator().manual_seed(4)
    history = torch.randint(0, 30, (6, 9), generator=g)
    history[:, 6:] = 0  # right padding
    items = torch.randint(1, 30, (40,), generator=g)
    got = history_membership(items, history)
    for b in range(6):
        real = set(history[b][history[b] > 0].tolist())
        assert got[b].tolist() == [int(i) in real for i in items]


def test_unknown_similarity_is_a_clear_error():
    with pytest.raises(ValueError, match="similarity must be one of"):
        sampled_softmax_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 3), 0.1, "euclid")
