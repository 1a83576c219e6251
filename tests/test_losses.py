import math

import pytest
import torch

from recbole_hydra.layers.losses import (
    full_softmax_loss,
    history_membership,
    sampled_softmax_loss,
    seen_item_logits,
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


def reference_seen_logits(query, row, col, seq_emb, item_seq, target, tau, similarity):
    """seen_item_logits entry by entry in float64: the distinct real items read up to the query's
    position, the target excluded."""
    out = torch.full((len(row), item_seq.size(1)), float("-inf"), dtype=torch.float64)
    for n, (b, t) in enumerate(zip(row.tolist(), col.tolist())):
        for s in range(t + 1):
            item = int(item_seq[b, s])
            if item == 0 or item in item_seq[b, :s].tolist() or item == int(target[n]):
                continue
            q, e = query[n].double(), seq_emb[b, s].double()
            if similarity == "cosine":
                q, e = q / q.norm(), e / e.norm()
            out[n, s] = float(q @ e) / tau
    return out


def seen_case(every_position):
    """Windows with right padding, a repeated item and a target that was read before."""
    g = torch.Generator().manual_seed(5)
    item_seq = torch.tensor(
        [[3, 7, 3, 9, 4, 0, 0, 0], [5, 6, 8, 2, 6, 1, 4, 9], [8, 0, 0, 0, 0, 0, 0, 0]]
    )
    lengths = (item_seq > 0).sum(1)
    if every_position:  # generative: every real position
        row, col = (item_seq > 0).nonzero(as_tuple=True)
    else:  # prefix: the last position of each window
        row, col = torch.arange(3), lengths - 1
    target = torch.randint(1, 10, (len(row),), generator=g)
    target[0] = 3  # read before: a positive, never its own negative
    seq_emb = torch.randn(3, 8, 4, generator=g)
    query = torch.randn(len(row), 4, generator=g)
    return query, row, col, seq_emb, item_seq, target


@pytest.mark.parametrize("every_position", [True, False], ids=["generative", "prefix"])
@pytest.mark.parametrize("similarity,tau", [("cosine", 0.05), ("dot", 0.7)])
def test_seen_item_logits_equal_a_float64_loop(every_position, similarity, tau):
    case = seen_case(every_position)
    got = seen_item_logits(*case, tau, similarity)
    want = reference_seen_logits(*case, tau, similarity)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # and inside the loss: eq 15 with the row's seen items added to its denominator
    query, row, col, seq_emb, item_seq, target = case
    g = torch.Generator().manual_seed(6)
    pos, neg = torch.randn(len(row), 4, generator=g), torch.randn(6, 4, generator=g)
    mask = torch.zeros(len(row), 6, dtype=torch.bool)
    loss = sampled_softmax_loss(query, pos, neg, tau, similarity, mask, got)
    seen = seq_emb[row]  # (N, L, d): each row's window; the -inf entries are masked below
    all_neg = [torch.cat([neg, seen[n]]) for n in range(len(row))]
    want_loss = sum(
        reference_infonce(
            query[n : n + 1],
            pos[n : n + 1],
            all_neg[n],
            tau,
            similarity,
            torch.cat([mask[n], torch.isinf(want[n])]).unsqueeze(0),
        )
        for n in range(len(row))
    ) / len(row)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)


def test_seen_item_logits_ignore_the_future():
    query, row, col, seq_emb, item_seq, target = seen_case(every_position=True)
    before = seen_item_logits(query, row, col, seq_emb, item_seq, target, 0.1, "dot")
    later = item_seq.clone()
    later[1, 5:] = torch.tensor([7, 7, 3])  # window 1's last three positions change
    emb = seq_emb.clone()
    emb[1, 5:] += 1.0
    after = seen_item_logits(query, row, col, emb, later, target, 0.1, "dot")
    earlier_rows = (row == 1) & (col < 5)
    assert earlier_rows.sum() == 5
    torch.testing.assert_close(after[earlier_rows], before[earlier_rows])
    assert not torch.equal(after[(row == 1) & (col >= 5)], before[(row == 1) & (col >= 5)])
