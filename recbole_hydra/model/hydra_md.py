"""HydraMD: one Hydra for several domains (Hydra paper section 4.4, 5.2, Table 5).

Data: ``recbole_hydra.data.multidomain.MultiDomainSequentialDataset`` (merged and per-domain
sequences, leave-one-out per domain), which ``recbole_hydra.registry`` picks through
``HydraMD.dataset_class``. Evaluation per domain: ``recbole_hydra.trainer.MultiDomainTrainer``.
"""

import contextlib

import torch
import torch.nn.functional as F

from recbole_hydra.data.multidomain import (
    DOMAIN_PREFIX,
    DOMAIN_TARGET,
    MERGED_PREFIX,
    MultiDomainError,
    MultiDomainSequentialDataset,
)
from recbole_hydra.layers.losses import (
    history_membership,
    sampled_softmax_loss,
    scoring_space,
    similarity_scores,
)
from recbole_hydra.model.hydra import Hydra


def sample_domain_negatives(
    domain_items, domain_offsets, domains, num_negatives, device, generator=None
):
    """``num_negatives`` items drawn uniformly with replacement from each domain of ``domains``
    -> (len(domains), num_negatives). ``domain_items`` holds the items sorted by domain and
    ``domain_offsets[d]:domain_offsets[d + 1]`` is domain d's slice (every domain non-empty)."""
    start = domain_offsets[domains]
    count = domain_offsets[domains + 1] - start
    u = torch.rand(len(domains), num_negatives, device=device, generator=generator)
    pick = start.unsqueeze(1) + (u * count.unsqueeze(1)).long()
    pick = torch.minimum(pick, (start + count - 1).unsqueeze(1))  # u * count rounding up to count
    return domain_items[pick]


class HydraMD(Hydra):
    r"""Multi-domain Hydra: the Hydra layers and the item model (ID embedding or item LLM, all of
    ``Hydra``'s code) are shared by all domains.

    Prediction for a target in domain s (eq 14): ``H^s_last + H^merged_last``, the last hidden
    states of the user's domain-s context and merged context (both strictly before the target),
    scored against domain s's items only (every other item gets -inf, so RecBole's full ranking
    is the ranking inside domain s). With ``similarity: cosine`` the two states are L2-normalised
    before they are added (the sum of the two directions: in the cosine space the model is
    trained in, the raw norms carry no meaning and would let one of the two decide); with
    ``dot`` they are added as they are.

    Training (eq 16, 17): ``L_cross``, generative InfoNCE over every position of the merged
    windows, plus ``sum_s L_single^s``, generative InfoNCE over every position of every domain
    window. Every positive's negatives are ``num_negatives`` items drawn uniformly from the
    positive's own domain (one draw per domain per step, shared by the batch's positives of that
    domain), never the positive, and with ``exclude_history_negatives`` never an item of the
    window being trained on. The paper's sums are normalised: ``L_cross`` is divided by the number
    of merged positions in the batch and ``sum_s L_single^s`` by the number of domain positions,
    i.e. each is a mean over its own positions. The two counts differ (a user's first item in
    each domain predicts nothing in its domain sequence, but all but the first item overall do in
    the merged one: sum_u (n_u - 1) against sum_u sum_s (n_us - 1)), so this is the paper's
    ``L_cross + sum_s L_single^s`` with the two terms weighted by slightly different constants
    (equal weight per mean, so that neither term dominates by sequence count alone: our choice
    where the paper is silent, see docs/paper-reading.md). ``loss_type: CE`` is the full
    softmax over the positive's domain. Each training step runs inside the item LLM's ``step()``
    (when ``item_model: llm``): every distinct item of the step is encoded once.

    Not supported: ``train_mode: prefix``; streaming (``recbole_hydra.serving``).
    """

    dataset_class = MultiDomainSequentialDataset

    def __init__(self, config, dataset):
        if not isinstance(dataset, MultiDomainSequentialDataset):
            raise MultiDomainError(
                "HydraMD needs a MultiDomainSequentialDataset "
                "(recbole_hydra.registry.create_dataset builds it)"
            )
        super().__init__(config, dataset)
        if self.train_mode != "generative":
            raise MultiDomainError(
                f"HydraMD supports train_mode: generative only, got {self.train_mode!r}"
            )
        self.DOMAIN = dataset.domain_field
        self.MERGED_SEQ = MERGED_PREFIX + self.ITEM_SEQ
        self.MERGED_SEQ_LEN = MERGED_PREFIX + self.ITEM_SEQ_LEN
        self.DOMAIN_SEQ = DOMAIN_PREFIX + self.ITEM_SEQ
        self.DOMAIN_SEQ_LEN = DOMAIN_PREFIX + self.ITEM_SEQ_LEN
        self.DOMAIN_TARGET = DOMAIN_TARGET
        self.domain_ids = list(dataset.domain_ids)
        self.domain_names = list(dataset.domain_names)
        item_domain = torch.as_tensor(dataset.item_domain, dtype=torch.long)
        n_dom = int(item_domain.max()) + 1
        order = torch.argsort(item_domain, stable=True)
        counts = torch.bincount(item_domain, minlength=n_dom)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.register_buffer("item_domain", item_domain, persistent=False)
        self.register_buffer("domain_items", order, persistent=False)
        self.register_buffer("domain_offsets", offsets, persistent=False)

    # -- prediction (eq 14) ------------------------------------------------------------------------
    def _query(self, interaction):
        h_domain = self._last_hidden(interaction)
        merged_len = interaction[self.MERGED_SEQ_LEN]
        h_merged = self._last_output(interaction[self.MERGED_SEQ], merged_len)
        if self.similarity == "cosine":
            return scoring_space(h_domain, "cosine") + scoring_space(h_merged, "cosine")
        return h_domain + h_merged

    def full_sort_predict(self, interaction):
        scores = (
            similarity_scores(self._query(interaction), self._item_table(), self.similarity)
            / self.temperature
        )
        other = self.item_domain.unsqueeze(0) != interaction[self.DOMAIN].unsqueeze(1)
        return scores.masked_fill(other, float("-inf"))

    def predict(self, interaction):
        query = scoring_space(self._query(interaction), self.similarity)
        items = interaction[self.ITEM_ID]
        scores = (query * scoring_space(self._item_vectors(items), self.similarity)).sum(
            -1
        ) / self.temperature
        other = self.item_domain[items] != interaction[self.DOMAIN]
        return scores.masked_fill(other, float("-inf"))

    # -- training (eq 16, 17) ----------------------------------------------------------------------
    def calculate_loss(self, interaction):
        step = (
            self.item_encoder.step() if self.item_encoder is not None else contextlib.nullcontext()
        )
        with step:
            return self._multi_domain_loss(interaction)

    def _positions(self, item_seq, item_seq_len, last_target):
        """Queries, targets and each query's window of the generative windows with length > 0."""
        real = item_seq_len > 0
        item_seq, item_seq_len, last_target = item_seq[real], item_seq_len[real], last_target[real]
        if len(item_seq) == 0:
            return None
        seq_output = self.forward(item_seq, item_seq_len)
        targets = self._next_items(item_seq, item_seq_len, last_target)
        row, col = targets.nonzero(as_tuple=True)
        return seq_output[row, col], targets[row, col], item_seq, row

    def _multi_domain_loss(self, interaction):
        cross = self._positions(
            interaction[self.MERGED_SEQ],
            interaction[self.MERGED_SEQ_LEN],
            interaction[self.ITEM_ID],
        )
        d_seq = interaction[self.DOMAIN_SEQ]
        single = self._positions(
            d_seq.flatten(0, 1),
            interaction[self.DOMAIN_SEQ_LEN].flatten(),
            interaction[self.DOMAIN_TARGET].flatten(),
        )
        parts = [p for p in (cross, single) if p is not None]
        if not parts:  # a batch of empty windows: nothing to predict
            return self.item_domain.new_zeros((), dtype=torch.float).requires_grad_()
        if self.loss_type == "CE":
            table = self._item_table()
            return sum(self._domain_ce(query, target, table) for query, target, _, _ in parts)
        targets = torch.cat([p[1] for p in parts])
        domains = torch.unique(self.item_domain[targets])
        negatives = sample_domain_negatives(
            self.domain_items, self.domain_offsets, domains, self.num_negatives, targets.device
        )
        vectors = self._item_vectors(torch.cat([targets, negatives.flatten()]))  # each item once
        pos_all, neg_all = vectors.split([len(targets), negatives.numel()])
        neg_all = neg_all.view(len(domains), self.num_negatives, -1)
        loss, at = 0.0, 0
        for query, target, history, row in parts:
            pos = pos_all[at : at + len(target)]
            at += len(target)
            loss = loss + self._domain_infonce(
                query, target, pos, domains, negatives, neg_all, history, row
            )
        return loss

    def _domain_infonce(self, query, target, pos, domains, negatives, neg_emb, history, row):
        """Mean InfoNCE over the rows, each against its own domain's negatives."""
        target_domain = self.item_domain[target]
        total = 0.0
        for k, d in enumerate(domains.tolist()):
            rows = (target_domain == d).nonzero(as_tuple=True)[0]
            if len(rows) == 0:
                continue
            neg = negatives[k]
            mask = target[rows].unsqueeze(1) == neg.unsqueeze(0)
            if self.exclude_history_negatives:
                mask |= history_membership(neg, history)[row[rows]]
            loss = sampled_softmax_loss(
                query[rows], pos[rows], neg_emb[k], self.temperature, self.similarity, mask
            )
            total = total + loss * len(rows)
        return total / len(target)

    def _domain_ce(self, query, target, table):
        logits = similarity_scores(query, table, self.similarity) / self.temperature
        other = self.item_domain.unsqueeze(0) != self.item_domain[target].unsqueeze(1)
        return F.cross_entropy(logits.masked_fill(other, float("-inf")), target)
