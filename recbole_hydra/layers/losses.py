"""Training objectives shared by every model in the package (Hydra paper section 5).

``sampled_softmax_loss`` is eq 15: InfoNCE of a query against its positive item and a pool of
negatives shared by the whole batch, optionally with ``seen_item_logits``: each position's own
already-read items as further negatives. ``full_softmax_loss`` is RecBole's CE over the whole item
table. Both compute in float32 with logsumexp, so tau = 0.05 stays finite under bf16 autocast.
"""

import torch
import torch.nn.functional as F

SIMILARITIES = ("cosine", "dot")


def scoring_space(x, similarity):
    """``x (..., d)`` as it enters a score under ``similarity``: L2-normalised for ``cosine``, as it
    is for ``dot``; half types (autocast) in float32.

    With tau as small as 0.05, raw dot products overflow the softmax: HSTU and HLLM L2-normalise
    both sides (cosine), which bounds every logit to [-1/tau, 1/tau]."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.normalize(x, dim=-1) if similarity == "cosine" else x


def similarity_scores(query, items, similarity):
    """(N, d) x (M, d) -> (N, M) cosine or dot scores, in float32."""
    return scoring_space(query, similarity) @ scoring_space(items, similarity).T


def paired_similarity(query, items, similarity):
    """(N, d), (N, d) -> (N,): the score of row i against item i."""
    return (scoring_space(query, similarity) * scoring_space(items, similarity)).sum(-1)


def sampled_softmax_loss(
    query, pos_emb, neg_emb, temperature, similarity="cosine", neg_mask=None, row_logits=None
):
    """Mean over rows of ``-log softmax([q.p, q.n_1 .. q.n_K] / tau)[0]`` (eq 15).

    query, pos_emb: (N, d), one row per predicted position. neg_emb: (K, d), negatives shared by
    all rows. neg_mask: optional (N, K) bool, True where negative k must not count for row i
    (it is the row's positive, or an item of the row's own window). row_logits: optional
    (N, M) logits of negatives of each row's own, already divided by tau, -inf where none
    (``seen_item_logits``).

    The (N, K) logits are the largest tensor of a training step (K = 512 negatives against every
    position): 1/tau is folded into the (N, d) query, the mask is applied in place, and the
    softmax is PyTorch's fused cross-entropy with the positive in column 0.
    """
    query = scoring_space(query, similarity) / temperature
    pos_logit = (query * scoring_space(pos_emb, similarity)).sum(-1, keepdim=True)
    neg_logits = query @ scoring_space(neg_emb, similarity).T
    if neg_mask is not None:
        neg_logits = neg_logits.masked_fill_(neg_mask, float("-inf"))
    logits = torch.cat([pos_logit, neg_logits] + ([] if row_logits is None else [row_logits]), -1)
    return F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))


def full_softmax_loss(query, item_table, target, temperature=1.0, similarity="dot"):
    """RecBole's CE: softmax over every item of the table (row 0, the padding item, included as
    RecBole does), mean over rows. query (N, d), item_table (n_items, d), target (N,)."""
    logits = similarity_scores(query, item_table, similarity) / temperature
    return F.cross_entropy(logits, target)


def seen_item_logits(query, row, col, seq_emb, item_seq, target, temperature, similarity):
    """(N, L) logits of each row against the items its query has already read: query n (at
    position ``col[n]`` of window ``row[n]``) against ``item_seq[row[n], s]`` for s <= col[n],
    divided by tau; -inf at padding, at later positions (they are the window's future, not
    negatives), at repeats of an earlier position (each distinct item counts once) and where the
    item is the row's own target (a repeat consumption is a positive).

    RecBole's unmasked protocol ranks the user's own items against the target, and the next item
    is rarely one already read: these are the negatives that protocol rewards, which uniform
    sampling draws only now and then. query (N, d); seq_emb (B, L, d), the items of item_seq
    (B, L).
    """
    batch, length = item_seq.shape
    query = scoring_space(query, similarity) / temperature
    items = scoring_space(seq_emb, similarity)
    if len(row) <= batch:  # about one query per window (prefix mode): each against its window
        logits = torch.einsum("nd,nld->nl", query, items[row])
    else:  # many queries per window: one (L, L) block per window, then the rows asked for
        placed = query.new_zeros(batch, length, query.size(-1)).index_put((row, col), query)
        logits = (placed @ items.transpose(1, 2))[row, col]
    positions = torch.arange(length, device=item_seq.device)
    earlier = positions.unsqueeze(1) > positions.unsqueeze(0)  # (s, s'): s' before s
    repeat = ((item_seq.unsqueeze(2) == item_seq.unsqueeze(1)) & earlier).any(-1)
    seen = item_seq[row]
    keep = (
        (positions.unsqueeze(0) <= col.unsqueeze(1))
        & (seen != 0)
        & ~repeat[row]
        & (seen != target.unsqueeze(1))
    )
    return logits.masked_fill(~keep, float("-inf"))


def sample_negatives(n_items, num_negatives, device, generator=None):
    """``num_negatives`` item ids drawn uniformly with replacement from 1..n_items-1 (0 is
    padding)."""
    return torch.randint(1, n_items, (num_negatives,), device=device, generator=generator)


def history_membership(items, history):
    """(B, K) bool: whether item k occurs in row b of ``history`` (B, L).

    A sorted search, O(B (L log L + K log L)), instead of a (B, L, K) comparison. Padding (0) in
    ``history`` never matches, as 0 is never sampled.
    """
    hist_sorted, _ = history.sort(dim=-1)
    idx = torch.searchsorted(hist_sorted, items.expand(history.size(0), -1).contiguous())
    found = hist_sorted.gather(-1, idx.clamp(max=hist_sorted.size(-1) - 1))
    return found == items.unsqueeze(0)
