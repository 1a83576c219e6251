"""RecBole dataset hook for generative (all-position) training.

RecBole's ``SequentialDataset.data_augmentation`` makes one example per prefix: a user with n
interactions gives n - 1 rows, each a copy of up to ``MAX_ITEM_LIST_LENGTH`` items, in a Python
loop. Generative training (Hydra paper eq 15) needs one example per user window, whose loss sums
over every position. ``GenerativeSequentialDataset`` builds the same prefix rows RecBole would,
but only those that are used: the valid and test rows that RecBole's leave-one-out split takes
from the end of each user, and the training rows whose windows tile the training history. The
rest of RecBole (split, dataloaders, evaluator) sees an ordinary sequential dataset.
"""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction

TRAIN_MODES = ("generative", "prefix")


class GenerativeSequentialDataset(SequentialDataset):
    """``train_mode: generative`` keeps, per user, the leave-one-out valid and test rows plus
    training windows: the last training row (its ``MAX_ITEM_LIST_LENGTH`` inputs and target hold
    the newest training items), then every ``MAX_ITEM_LIST_LENGTH``-th row before it, at most
    ``max_windows_per_user`` of them (0 = all, so the windows cover the whole training history
    without overlap). ``train_mode: prefix`` is RecBole's own augmentation."""

    def __init__(self, config):
        train_mode = config["train_mode"]
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        self.train_mode = train_mode
        super().__init__(config)

    def data_augmentation(self):
        if self.train_mode == "prefix":
            return super().data_augmentation()
        split = (self.config["eval_args"] or {}).get("split") or {}
        if "LS" not in split:
            raise ValueError(
                "train_mode: generative needs the leave-one-out split (eval_args: {split: {LS: "
                "valid_and_test}}); set train_mode: prefix for other splits"
            )
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        target_index, start_index = self._generative_rows(self.inter_feat[self.uid_field].numpy())
        self._materialise_rows(target_index, start_index)

    def _generative_rows(self, uids):
        """Target row indices of the kept prefix examples and the first input row of each."""
        max_len = self.max_item_list_len
        n = len(uids)
        first = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        counts = np.diff(np.r_[first, n])
        user_first = np.repeat(first, counts)
        k = np.arange(n) - user_first  # interactions of this user before row i
        # RecBole's prefix rows are the rows with k >= 1; leave-one-out gives the last
        # min(2, m - 1) of a user's m prefix rows to valid/test, the rest to train.
        m = np.repeat(counts - 1, counts)
        j = k - 1  # index of row i among its user's prefix rows
        n_eval = np.minimum(2, m - 1)
        n_train = m - n_eval
        is_prefix = k >= 1
        keep_eval = is_prefix & (j >= n_train)
        back = n_train - 1 - j  # prefix rows between row i and the user's last training row
        keep_train = is_prefix & (back >= 0) & (back % max_len == 0)
        windows = self.config["max_windows_per_user"]
        windows = 1 if windows is None else int(windows)
        if windows > 0:
            keep_train &= back // max_len < windows
        target_index = np.flatnonzero(keep_eval | keep_train)
        start_index = np.maximum(user_first[target_index], target_index - max_len)
        return target_index, start_index

    def _materialise_rows(self, target_index, start_index):
        max_len = self.max_item_list_len
        length = target_index - start_index
        offsets = np.arange(max_len)
        gather = torch.from_numpy(np.minimum(start_index[:, None] + offsets, target_index[:, None]))
        is_pad = torch.from_numpy(offsets[None, :] >= length[:, None])
        new_data = self.inter_feat[target_index]
        new_dict = {self.item_list_length_field: torch.from_numpy(length.astype(np.int64))}
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            values = self.inter_feat[field][gather]  # (rows, max_len, ...)
            pad = is_pad.view(is_pad.shape + (1,) * (values.dim() - 2))
            new_dict[getattr(self, f"{field}_list_field")] = values.masked_fill(pad, 0)
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data
