"""Per-epoch history of a RecBole trainer, and an optional wall-clock budget for its training.

Both are added by wrapping the trainer's ``_train_epoch`` and ``_valid_epoch``: RecBole's loop,
early stopping and checkpointing run unchanged.
"""

import time

import torch


class _BudgetedBatches:
    """A RecBole dataloader that stops yielding batches once ``out_of_time()`` says so (after at
    least one batch); every other attribute is the dataloader's own."""

    def __init__(self, loader, out_of_time, stopped):
        self._loader, self._out_of_time, self._stopped = loader, out_of_time, stopped

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for index, batch in enumerate(self._loader):
            if index and self._out_of_time():
                self._stopped.append(index)
                return
            yield batch


def record_history(trainer, time_budget_s=None, epoch_callback=None, distributed=False):
    """Time each training epoch and note each validation, without touching RecBole's loop.

    With ``time_budget_s``, training stops once the budget is spent (after at least one batch): in
    a single process between two batches (an epoch of a slow model on a large dataset can outlast
    any budget; the cut epoch is validated as a whole one is, and its history entry says how many
    batches it trained), in a process group at the end of an epoch (the ranks agree on it: the
    budget is spent when it is spent on any rank, so that all stop at the same step). The
    validation after that reports the worst score with patience 0, so RecBole's own early
    stopping ends the run and keeps the best checkpoint it saved. ``epoch_callback(epoch, entry,
    trainer)`` is called after each validation.
    """
    history, start, over = [], [], []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def budget_spent():
        spent = time.perf_counter() - start[0] > time_budget_s
        if distributed:
            flag = torch.tensor([float(spent)], device=trainer.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def timed_train_epoch(train_data, *args, **kwargs):
        if not start:
            start.append(time.perf_counter())
        if time_budget_s is not None and (
            over or (history and budget_spent())
        ):  # the first always starts
            over.append(True)
            return 0.0
        stopped = []
        if time_budget_s is not None and not distributed:
            train_data = _BudgetedBatches(train_data, budget_spent, stopped)
        t0 = time.perf_counter()
        loss = train_epoch(train_data, *args, **kwargs)
        history.append({"train_s": time.perf_counter() - t0})
        if stopped:  # the budget ran out inside this epoch: validate it, then stop
            history[-1].update(batches=stopped[0], batches_per_epoch=len(train_data))
            over.append(True)
        return loss

    def noted_valid_epoch(*args, **kwargs):
        cut_epoch_unvalidated = (
            bool(history) and "batches" in history[-1] and "valid_score" not in history[-1]
        )
        if over and not cut_epoch_unvalidated:
            trainer.stopping_step = 0
            worst = -float("inf") if trainer.valid_metric_bigger else float("inf")
            return worst, history[-1].get("valid_result", {}) if history else {}
        score, result = valid_epoch(*args, **kwargs)
        if history:
            history[-1].update(
                valid_score=score, valid_result=dict(result), wall_s=time.perf_counter() - start[0]
            )
            if epoch_callback is not None:
                epoch_callback(len(history), history[-1], trainer)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, noted_valid_epoch
    return history
