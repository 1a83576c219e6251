"""What is particular to HSTU; the contract every model keeps is in test_model_contract.py."""

import pytest
import torch

from recbole_hydra import registry
from recbole_hydra.config import make_config
from recbole_hydra.model.hstu import HSTU, time_buckets
from recbole_hydra.quick_start import run
from recbole_hydra.registry import create_dataset
from tests.conftest import ml100k_slice, quiet_config, random_sequences, write_inter
from tests.model_helpers import SMALL_HSTU, assert_causal, build_model, random_batch


def times_for(model, seed=0):
    """Increasing timestamps (seconds) for ``random_batch(model)``'s (4, 10) batch."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.exp(torch.rand(4, 10, generator=g) * 14)  # 1 s .. ~14 days
    return {"timestamps": 8.8e8 + gaps.cumsum(1)}


@pytest.fixture
def hstu(tmp_path):
    return build_model(tmp_path, "HSTU", **SMALL_HSTU)


def test_defaults_follow_the_reference(tmp_path):
    model, _, _, _ = build_model(tmp_path, "HSTU")
    assert isinstance(model, HSTU)
    assert (
        model.train_mode,
        model.loss_type,
        model.similarity,
        model.temperature,
        model.num_negatives,
    ) == ("generative", "InfoNCE", "cosine", 0.05, 128)
    assert len(model.layers) == 2 and model.layers[0].n_heads == 1
    assert model.layers[0].attention_dim == model.layers[0].linear_dim == 50
    assert model.use_time and model.layers[0].time_bias.numel() == 129


def test_output_depends_on_the_time_gaps(hstu):
    model = hstu[0].eval()
    seq, lengths = random_batch(model)
    times = times_for(model)["timestamps"]
    out = model(seq, lengths, timestamps=times)
    spread = 8.8e8 + (times - 8.8e8) * 1000  # same order, gaps 1000x longer
    assert not torch.allclose(model(seq, lengths, timestamps=spread), out)
    shifted = times + 12345.0  # only differences count
    torch.testing.assert_close(model(seq, lengths, timestamps=shifted), out)
    with pytest.raises(ValueError, match="timestamps"):
        model(seq, lengths)


def test_time_buckets_are_the_references():
    t = torch.tensor([[0.0, 0.5, 2.0, 100.0, 1e9]])
    b = time_buckets(t, t, num_buckets=128)
    expected = (torch.log(torch.tensor([1.0, 1.0, 2.0, 100.0, 1e9])) / 0.301).long()
    assert torch.equal(b[0, :, 0], expected)
    assert time_buckets(t * float("inf"), t, num_buckets=128).max() == 128  # clipped


def test_next_query_time_uses_the_next_interaction(tmp_path):
    model, train, _, _ = build_model(tmp_path, "HSTU", time_query="next", **SMALL_HSTU)
    batch = next(iter(train))
    inputs = model._forward_inputs(batch)
    lengths = batch[model.ITEM_SEQ_LEN]
    query, times = inputs["query_timestamps"], inputs["timestamps"]
    row = 0
    n = int(lengths[row])
    assert torch.equal(query[row, : n - 1], times[row, 1:n])
    assert query[row, n - 1] == batch["timestamp"][row]
    assert_causal(
        model,
        timestamps=times_for(model)["timestamps"],
        query_timestamps=times_for(model, seed=1)["timestamps"],
    )
    model.calculate_loss(batch).backward()


def test_position_only_model_runs_without_timestamps(tmp_path):
    model, train, _, _ = build_model(tmp_path, "HSTU", time_bias=False, **SMALL_HSTU)
    assert not model.use_time and model.layers[0].time_bias is None
    assert model._forward_inputs(next(iter(train))) == {}
    seq, lengths = random_batch(model)
    assert model(seq, lengths).shape == (*seq.shape, 16)  # no timestamps needed


def test_builds_on_a_dataset_without_time_field(tmp_path):
    # RecBole's sequential datasets need a time field to order interactions, so a dataset without
    # one cannot be loaded; the model itself only needs the dataset to report no time field.
    root = write_inter(tmp_path / "data", "toy", random_sequences(10, 20, 3, 8))
    config = make_config("HSTU", "toy", config_dict=quiet_config(root, **SMALL_HSTU))
    dataset = create_dataset(config)
    dataset.time_field = None
    model = registry.build_model(config, dataset)
    assert not model.use_time and model.layers[0].time_bias is None
    seq, lengths = random_batch(model)
    assert model(seq, lengths).shape == (*seq.shape, 16)


@pytest.mark.parametrize("train_mode", ["generative", "prefix"])
def test_quick_start_run_on_ml100k_slice(tmp_path, train_mode):
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = quiet_config(
        data, hidden_size=16, num_negatives=32, MAX_ITEM_LIST_LENGTH=20, train_mode=train_mode
    )
    result = run("HSTU", "ml-100k-slice", config_dict=config, saved=False)
    for metric in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
        assert 0.0 <= result["test_result"][metric] <= 1.0
    assert result["epochs"] == 1
