"""GenerativeSequentialDataset against RecBole's own prefix augmentation as the reference."""

from collections import Counter

import pytest
import torch

from recbole_hydra.config import make_config
from recbole_hydra.errors import UsageError
from recbole_hydra.model.base import GenerativeSequentialRecommender
from recbole_hydra.registry import create_dataset
from tests.conftest import quiet_config, random_sequences, write_inter

MAX_LEN = 8


def split(data_path, **overrides):
    config = make_config(
        "Hydra",
        "toy",
        config_dict=quiet_config(data_path, MAX_ITEM_LIST_LENGTH=MAX_LEN, **overrides),
    )
    return create_dataset(config).build()


def train_targets(train):
    """Multiset of (user, target timestamp) that a training split asks a model to predict."""
    inter = train.inter_feat
    seq_ts, lengths = inter["timestamp_list"], inter["item_length"]
    out = Counter()
    for b in range(len(inter)):
        n = int(lengths[b])
        # generative rows predict every next item in the window, then the row's own target
        for t in range(1, n):
            out[(int(inter["user_id"][b]), float(seq_ts[b, t]))] += 1
        out[(int(inter["user_id"][b]), float(inter["timestamp"][b]))] += 1
    return out


def prefix_targets(train):
    inter = train.inter_feat
    return Counter((int(u), float(t)) for u, t in zip(inter["user_id"], inter["timestamp"]))


@pytest.fixture
def toy(tmp_path):
    # lengths from 1 to 30: users shorter than the window, and users needing several windows
    return write_inter(tmp_path / "data", "toy", random_sequences(25, 40, 1, 30, seed=3))


def test_windows_tile_exactly_the_prefix_training_targets(toy):
    gen_train, gen_valid, gen_test = split(toy, train_mode="generative", max_windows_per_user=0)
    pre_train, pre_valid, pre_test = split(toy, train_mode="prefix")
    assert train_targets(gen_train) == prefix_targets(pre_train)  # same targets, none twice
    for gen, pre in ((gen_valid, pre_valid), (gen_test, pre_test)):
        g, p = gen.inter_feat, pre.inter_feat
        g_order, p_order = g["user_id"].argsort(), p["user_id"].argsort()
        for field in ("user_id", "item_id", "item_length", "item_id_list", "timestamp_list"):
            assert torch.equal(g[field][g_order], p[field][p_order]), field


def test_one_example_per_user_by_default(toy):
    gen_train, gen_valid, _ = split(toy, train_mode="generative", max_windows_per_user=1)
    users = gen_train.inter_feat["user_id"].tolist()
    assert len(users) == len(set(users))
    pre_train = split(toy, train_mode="prefix")[0]
    assert set(users) == set(pre_train.inter_feat["user_id"].tolist())
    # the one window holds the user's newest MAX_LEN training targets, never a valid/test item
    pre = prefix_targets(pre_train)
    got = train_targets(gen_train)
    for user in set(users):
        newest = sorted(t for (u, t) in pre if u == user)[-MAX_LEN:]
        assert sorted(t for (u, t) in got if u == user) == newest
    valid_ts = dict(
        zip(gen_valid.inter_feat["user_id"].tolist(), gen_valid.inter_feat["timestamp"].tolist())
    )
    for user, ts in got:
        if user in valid_ts:
            assert ts < valid_ts[user]


def test_padding_is_zero_after_the_real_items(toy):
    gen_train = split(toy, train_mode="generative", max_windows_per_user=0)[0]
    inter = gen_train.inter_feat
    positions = torch.arange(MAX_LEN)
    pad = positions.unsqueeze(0) >= inter["item_length"].unsqueeze(1)
    assert (inter["item_id_list"][pad] == 0).all() and (inter["item_id_list"][~pad] > 0).all()


def test_next_item_targets_of_a_window():
    seq = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0]])
    targets = GenerativeSequentialRecommender._next_items(
        seq, torch.tensor([3, 1]), torch.tensor([8, 4])
    )
    assert targets.tolist() == [[6, 7, 8, 0], [4, 0, 0, 0]]


def test_generative_mode_needs_leave_one_out(toy):
    with pytest.raises(ValueError, match="leave-one-out"):
        split(
            toy,
            train_mode="generative",
            eval_args={"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "mode": "full"},
        )


def test_unknown_train_mode(toy):
    with pytest.raises(ValueError, match="train_mode must be one of"):
        split(toy, train_mode="bidirectional")


def test_missing_timestamp_column_is_a_usage_error(tmp_path):
    root = write_inter(tmp_path / "data", "toy", random_sequences(5, 10, 3, 5), with_time=False)
    with pytest.raises(UsageError, match="no 'timestamp' column"):
        make_config("Hydra", "toy", config_dict=quiet_config(root, load_col=None))
