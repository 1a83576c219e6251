"""RecBole's Trainer with the paper's learning-rate schedule (Hydra section 6.1).

Only the schedule is added: RecBole's loop, early stopping, checkpointing and evaluation stay as
they are. The scheduler steps from an optimizer step hook, so RecBole's ``_train_epoch`` needs no
copy.
"""

import math

from recbole.trainer import Trainer
from torch.optim.lr_scheduler import LambdaLR

LR_SCHEDULERS = ("cosine", "constant")


def warmup_cosine(total_steps, warmup_steps):
    """LambdaLR factor: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine to 0."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class GenerativeTrainer(Trainer):
    """``lr_scheduler: cosine`` (default) warms up over ``warmup_ratio`` of all steps
    (``epochs * batches per epoch``) and then decays by a cosine; ``constant`` is RecBole's."""

    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        schedule = self.config["lr_scheduler"]
        if schedule not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {schedule!r}")
        hook = None
        if schedule == "cosine":
            # Planned over every epoch of the run, so that a resumed run continues the schedule
            # it started (``resumed_lr_scheduler``: set by ``checkpoint.resume_trainer``).
            total = max(1, self.epochs * len(train_data))
            ratio = self.config["warmup_ratio"]  # ~: no warm-up
            factor = warmup_cosine(total, max(1, int((0.0 if ratio is None else ratio) * total)))
            self.lr_scheduler = LambdaLR(self.optimizer, factor)
            resumed = getattr(self, "resumed_lr_scheduler", None)
            if resumed is not None:
                self.lr_scheduler.load_state_dict(resumed)
                step = self.lr_scheduler.last_epoch
                for group, base in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs):
                    group["lr"] = base * factor(step)
            hook = self.optimizer.register_step_post_hook(lambda *_: self.lr_scheduler.step())
        try:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        finally:
            if hook is not None:
                hook.remove()
