"""What every model of the package shares: the training objective and RecBole's scoring methods.

A subclass builds its layers and an ``item_embedding`` (``nn.Embedding(n_items, d, padding_idx=0)``)
and implements ``forward(item_seq, item_seq_len, **inputs) -> (B, L, d)``, the hidden state at
every position (right-padded, causal). This base turns that into RecBole's ``calculate_loss``,
``predict`` and ``full_sort_predict``, with the choices of the config:

- ``train_mode``: ``generative`` (every real position predicts the next item, eq 15; needs the
  one-example-per-user data of ``GenerativeSequentialDataset``) or ``prefix`` (RecBole's: only the
  last position of each prefix example predicts its target).
- ``loss_type``: ``InfoNCE`` (sampled softmax, ``num_negatives`` uniform negatives shared by the
  batch, optionally never from the training window itself; with ``seen_item_negatives`` each
  position also scores the items it has already read as negatives) or ``CE`` (softmax over all
  items).
- ``similarity`` (``cosine`` | ``dot``) and ``temperature``: used in training and in scoring, so
  the ranking at evaluation is the one the model was trained for.
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_hydra.layers.losses import (
    full_softmax_loss,
    history_membership,
    paired_similarity,
    sample_negatives,
    sampled_softmax_loss,
    seen_item_logits,
    similarity_scores,
)

LOSS_TYPES = ("InfoNCE", "CE")


class GenerativeSequentialRecommender(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # values checked once, when the config is built (recbole_hydra.config_schema)
        self.train_mode = config["train_mode"]
        self.loss_type = config["loss_type"]
        self.similarity = config["similarity"]
        self.temperature = float(config["temperature"])
        self.num_negatives = int(config["num_negatives"])
        self.exclude_history_negatives = config["exclude_history_negatives"]
        self.seen_item_negatives = config["seen_item_negatives"]
        self.eval_tokens_per_pass = int(config["eval_tokens_per_pass"])

    # -- what subclasses may override -------------------------------------------------------
    def _forward_inputs(self, interaction):
        """Extra keyword inputs of ``forward`` taken from the batch (e.g. timestamps)."""
        return {}

    def _item_table(self):
        """(n_items, d) representations of all items; row 0 is padding."""
        return self.item_embedding.weight

    def _item_vectors(self, item_ids):
        """Representations of ``item_ids`` (any shape) -> (*shape, d). Training asks only for the
        items of the step (positives and negatives at once), so an expensive item encoder can
        encode each distinct item once."""
        return self.item_embedding(item_ids)

    # -- RecBole's interface ----------------------------------------------------------------
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len, **self._forward_inputs(interaction))
        if self.train_mode == "generative":
            targets = self._next_items(item_seq, item_seq_len, interaction[self.POS_ITEM_ID])
            row, col = targets.nonzero(as_tuple=True)
            target = targets[row, col]
        else:
            row = torch.arange(item_seq.size(0), device=item_seq.device)
            col = item_seq_len - 1
            target = interaction[self.POS_ITEM_ID]
        query = seq_output[row, col]
        if self.loss_type == "CE":
            return full_softmax_loss(
                query, self._item_table(), target, self.temperature, self.similarity
            )
        negatives = sample_negatives(self.n_items, self.num_negatives, query.device)
        neg_mask = target.unsqueeze(1) == negatives.unsqueeze(0)  # the positive is never a negative
        if self.exclude_history_negatives:
            neg_mask |= history_membership(negatives, item_seq)[row]
        ids = [target, negatives] + ([item_seq.flatten()] if self.seen_item_negatives else [])
        pos_emb, neg_emb, *seq_emb = self._item_vectors(torch.cat(ids)).split([len(i) for i in ids])
        row_logits = None
        if self.seen_item_negatives:
            seq_emb = seq_emb[0].view(*item_seq.shape, -1)
            row_logits = seen_item_logits(
                query, row, col, seq_emb, item_seq, target, self.temperature, self.similarity
            )
        return sampled_softmax_loss(
            query, pos_emb, neg_emb, self.temperature, self.similarity, neg_mask, row_logits
        )

    def predict(self, interaction):
        query = self._scoring_queries(interaction)
        items = self._item_vectors(interaction[self.ITEM_ID])
        return paired_similarity(query, items, self.similarity) / self.temperature

    def full_sort_predict(self, interaction):
        query = self._scoring_queries(interaction)
        return similarity_scores(query, self._item_table(), self.similarity) / self.temperature

    # -- helpers ------------------------------------------------------------------------------
    def _scoring_queries(self, interaction):
        """``_last_hidden`` of the batch; without autograd, in blocks of about
        ``eval_tokens_per_pass`` tokens. Same result, faster on CPU: the intermediates of a whole
        evaluation batch are hundreds of MB, and glibc hands each allocation that large back to
        the kernel on free, so every op page-faults its output in again; with blocks of a few
        thousand tokens far less of that happens."""
        batch, length = interaction[self.ITEM_SEQ].shape
        rows = max(1, self.eval_tokens_per_pass // max(length, 1))
        if torch.is_grad_enabled() or batch <= rows:
            return self._last_hidden(interaction)
        return torch.cat(
            [
                self._last_hidden(interaction[start : start + rows])
                for start in range(0, batch, rows)
            ]
        )

    def _last_hidden(self, interaction):
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(
            interaction[self.ITEM_SEQ], item_seq_len, **self._forward_inputs(interaction)
        )
        return self.gather_indexes(seq_output, item_seq_len - 1)

    @staticmethod
    def _next_items(item_seq, item_seq_len, last_target):
        """(B, L) id of the item each position must predict; 0 where nothing is predicted.

        Inside a right-padded window the next item of position t is ``item_seq[t + 1]``; the last
        real position predicts the example's target, which RecBole keeps outside the window.
        """
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        shifted = torch.nn.functional.pad(item_seq[:, 1:], (0, 1))
        targets = torch.where(positions < (item_seq_len - 1).unsqueeze(1), shifted, 0)
        return targets.scatter(1, (item_seq_len - 1).unsqueeze(1), last_target.unsqueeze(1))
