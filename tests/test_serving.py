"""StreamingRecommender: O(1) updates that equal a full recompute over the whole history."""

import pytest
import torch

from recbole_hydra.layers.losses import similarity_scores
from recbole_hydra.quick_start import run
from recbole_hydra.serving import StreamingRecommender, StreamState
from tests.conftest import quiet_config, random_sequences, write_inter
from tests.model_helpers import SMALL_HYDRA, build_model

SMALL = dict(SMALL_HYDRA, MAX_ITEM_LIST_LENGTH=10)


@pytest.fixture(scope="module")
def streamer(tmp_path_factory):
    model, *_ = build_model(tmp_path_factory.mktemp("serve"), "Hydra", n_items=40, **SMALL)
    return StreamingRecommender(model)


def full_recompute(model, history):
    seq = torch.as_tensor(history)[None]
    with torch.no_grad():
        hidden = model(seq, torch.tensor([seq.size(1)]))[:, -1]
    return similarity_scores(hidden, model._item_table(), model.similarity) / model.temperature


@pytest.mark.parametrize("start,total", [(1, 9), (4, 37)])  # 37 > MAX_ITEM_LIST_LENGTH
def test_updates_equal_full_recompute(streamer, start, total):
    g = torch.Generator().manual_seed(total)
    history = torch.randint(1, streamer.n_items, (total,), generator=g).tolist()
    state = streamer.init_state(history[:start])
    for t in range(start, total):
        state = streamer.update(state, history[t])
        torch.testing.assert_close(
            streamer.scores(state),
            full_recompute(streamer.model, history[: t + 1]),
            rtol=1e-4,
            atol=1e-4,
        )
    assert int(state.position) == total


def test_batched_states_equal_single_user_states(streamer):
    g = torch.Generator().manual_seed(5)
    histories = [torch.randint(1, streamer.n_items, (n,), generator=g).tolist() for n in (3, 11, 6)]
    batch = streamer.init_state(histories)
    singles = [streamer.init_state(h) for h in histories]
    torch.testing.assert_close(
        streamer.scores(batch), streamer.scores(StreamingRecommender.batch(singles))
    )
    nxt = [7, 8, 9]
    batch = streamer.update(batch, nxt)
    for i, single in enumerate(singles):
        single = streamer.update(single, nxt[i])
        torch.testing.assert_close(
            streamer.scores(StreamingRecommender.select(batch, i)), streamer.scores(single)
        )


def test_state_is_plain_tensors_that_save(streamer, tmp_path):
    state = streamer.init_state([1, 2, 3])
    torch.save(state, tmp_path / "state.pt")
    loaded = StreamState(*torch.load(tmp_path / "state.pt"))
    torch.testing.assert_close(streamer.scores(loaded), streamer.scores(state))


def test_topk_excludes_padding_and_given_items(streamer):
    state = streamer.init_state([[1, 2, 3], [4, 5]])
    scores = streamer.scores(state)
    scores[:, 0] = -torch.inf
    scores[:, [2, 3]] = -torch.inf
    values, items = streamer.topk(state, 5, exclude=[2, 3])
    assert not set(items.flatten().tolist()) & {0, 2, 3}
    torch.testing.assert_close(values, scores.topk(5).values)


@pytest.mark.parametrize("bad", [[1, 999], [0], []])
def test_unknown_item_or_empty_history_is_a_clear_error(streamer, bad):
    with pytest.raises(ValueError, match="not an internal item id|empty"):
        streamer.init_state(bad)
    if bad:
        with pytest.raises(ValueError, match="not an internal item id"):
            streamer.update(streamer.init_state([1]), bad[-1])


def test_from_checkpoint_scores_like_the_trained_model(tmp_path):
    root = write_inter(tmp_path / "data", "toy", random_sequences(15, 30, 4, 12))
    result = run(
        "Hydra", "toy", config_dict=quiet_config(root, topk=[5], valid_metric="NDCG@5", **SMALL)
    )
    streamer = StreamingRecommender.from_checkpoint(result["model_file"])
    from recbole_hydra.checkpoint import load_data_and_model

    _, model, _, _, _, test = load_data_and_model(result["model_file"])
    model.eval()
    batch = test.dataset.inter_feat[:5]
    histories = [row[:n].tolist() for row, n in zip(batch["item_id_list"], batch["item_length"])]
    with torch.no_grad():
        expected = model.full_sort_predict(batch)
    torch.testing.assert_close(
        streamer.scores(streamer.init_state(histories)), expected, rtol=1e-4, atol=1e-4
    )


def test_recommend_command_replays_events(tmp_path, capsys):
    import run_hydra

    root = write_inter(tmp_path / "data", "toy", random_sequences(15, 30, 6, 12))
    result = run(
        "Hydra", "toy", config_dict=quiet_config(root, topk=[5], valid_metric="NDCG@5", **SMALL)
    )
    capsys.readouterr()
    assert (
        run_hydra.main(
            [
                "--recommend",
                f"--checkpoint={result['model_file']}",
                "--users=u1,u2",
                "--k=3",
                "--replay=2",
            ]
        )
        == 0
    )
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("user ")]
    assert len(lines) == 2 * 3 and all(len(l.split(": ")[1].split(" | ")) == 3 for l in lines)
    assert (
        run_hydra.main(["--recommend", f"--checkpoint={result['model_file']}", "--users=nobody"])
        == 2
    )
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert (
        run_hydra.main(
            ["--recommend", f"--checkpoint={result['model_file']}", "--users=u1", "--k=1000"]
        )
        == 2
    )
    assert "k must be an integer from 1 to" in capsys.readouterr().err


def test_recommend_replays_each_users_own_events(tmp_path, capsys):
    """A user with a short history replays fewer events without capping the users after it."""
    import run_hydra

    rows = [r for r in random_sequences(15, 30, 11, 12) if r[0] != "u0"] + [
        ("u0", f"i{t}", t) for t in range(4)
    ]
    root = write_inter(tmp_path / "data", "toy", rows)
    result = run(
        "Hydra", "toy", config_dict=quiet_config(root, topk=[5], valid_metric="NDCG@5", **SMALL)
    )
    capsys.readouterr()
    assert (
        run_hydra.main(
            [
                "--recommend",
                f"--checkpoint={result['model_file']}",
                "--users=u0,u1",
                "--k=2",
                "--replay=5",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    lines = [l for l in captured.out.splitlines() if l.startswith("user ")]
    # u0's test row holds its 3 earlier events and the test item: 3 replayed events, 4 lines;
    # u1's holds 10 + 1: all 5 replayed, 6 lines
    assert [l.split(" ")[1] for l in lines] == ["u0"] * 4 + ["u1"] * 6
    # not silently: one warning line for u0, none for u1
    assert captured.err.splitlines() == [
        "warning: user u0 has 4 events in its test history (at most MAX_ITEM_LIST_LENGTH=10 and "
        "the test item): replaying its last 3, not 5"
    ]


def test_topk_needs_k_within_the_items_left(streamer):
    state = streamer.init_state([1, 2, 3])
    n_items = streamer.scores(state).shape[1]
    assert streamer.topk(state, n_items - 3, exclude=[2, 3])[1].shape == (1, n_items - 3)
    for k in (0, n_items - 2, 2.0):
        with pytest.raises(ValueError, match="k must be an integer from 1 to"):
            streamer.topk(state, k, exclude=[2, 3])
