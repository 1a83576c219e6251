"""History masking in full-ranking evaluation (``mask_history_items: True``).

RecBole ranks every item for a sequential model, the items already in the user's input sequence
included. HSTU, HLLM and gSASRec publish their numbers with those items removed from the ranking:
each gets a score of -inf, except the target itself (a repeated item stays rankable as the
answer). ``mask_history`` gives a trainer's full-sort evaluation that protocol, for any model and
trainer, RecBole's included; with ``mask_history_items: False`` the trainer is left as it is.
"""

import torch


def mask_history(trainer):
    """Wrap ``trainer._full_sort_batch_eval`` so that the items of each row's input sequence
    score -inf, the row's target kept, when its config says ``mask_history_items: True``."""
    config = trainer.config
    if not config["mask_history_items"]:
        return trainer
    sequence_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    batch_eval = trainer._full_sort_batch_eval

    def masked_batch_eval(batched_data):
        interaction, scores, positive_u, positive_i = batch_eval(batched_data)
        history = interaction[sequence_field].to(scores.device)  # (rows, L), 0 = padding
        rows = torch.arange(history.shape[0], device=scores.device).unsqueeze(1)
        target = scores[positive_u, positive_i]
        scores[rows, history] = -torch.inf  # padding item 0 is never ranked anyway
        scores[positive_u, positive_i] = target
        return interaction, scores, positive_u, positive_i

    trainer._full_sort_batch_eval = masked_batch_eval
    return trainer
