"""config_schema.validate: one line per bad key, for the model being configured."""

import pytest
import yaml

from recbole_hydra import config_schema
from recbole_hydra.config import PROPERTIES, make_config
from recbole_hydra.errors import UsageError
from tests.conftest import quiet_config, random_sequences, write_inter


@pytest.fixture
def toy(tmp_path):
    return write_inter(tmp_path / "data", "toy", random_sequences(10, 20, 4, 8))


def config(toy, model="Hydra", **overrides):
    return make_config(model, "toy", config_dict=quiet_config(toy, **overrides))


@pytest.mark.parametrize("model", list(config_schema.MODEL_KEYS))
def test_every_key_a_model_is_checked_for_has_its_default_in_the_yamls(model):
    """The yamls hold every default: a key is unset only where ~ means something."""
    values = {}
    for name in ("overall.yaml", f"{model}.yaml"):
        values.update(yaml.safe_load((PROPERTIES / name).read_text()))
    for key, rule in config_schema.MODEL_KEYS[model].items():
        assert key in values or rule.none is not None, (
            f"{key} has no default in properties/{model}.yaml"
        )
        if values.get(key) is None:
            assert rule.none is not None, f"{key}: ~ in properties/{model}.yaml but ~ means nothing"
        else:
            assert rule.accepts(values[key]), (key, values[key])


@pytest.mark.parametrize("model", ["Hydra", "HSTU", "Mamba4Rec", "SASRecGen"])
def test_the_shipped_defaults_pass(toy, model):
    config(toy, model)


@pytest.mark.parametrize(
    "model,overrides,message",
    [
        ("Hydra", {"d_state": 2.5}, "d_state must be a positive integer, got 2.5"),
        ("Hydra", {"use_kernels": "yes"}, "use_kernels must be True or False, got 'yes'"),
        (
            "Hydra",
            {"head_size": 0},
            "head_size must be a positive integer, or ~ for hidden_size // n_heads, got 0",
        ),
        ("Hydra", {"dropout_prob": 1.0}, "dropout_prob must be a number in [0, 1), got 1.0"),
        ("Hydra", {"temperature": 0}, "temperature must be a number > 0, got 0"),
        ("Mamba4Rec", {"temperature": -1.0}, "temperature must be a number > 0, got -1.0"),
        ("Hydra", {"num_negatives": -1}, "num_negatives must be an integer >= 0, got -1"),
        ("Hydra", {"loss_type": "BPR"}, "loss_type must be one of InfoNCE, CE, got 'BPR'"),
        ("HSTU", {"time_query": "later"}, "time_query must be one of current, next, got 'later'"),
        ("Hydra", {"item_model": "text"}, "item_model must be one of embedding, llm, got 'text'"),
        (
            "SASRecGen",
            {"hidden_act": "tanh"},
            "hidden_act must be one of gelu, relu, silu, swish, got 'tanh'",
        ),
        (
            "Hydra",
            {"train_mode": None},
            "train_mode is not set: set it to one of generative, prefix",
        ),
        (
            "Hydra",
            {"loss_type": "InfoNCE", "num_negatives": 0},
            "loss_type: InfoNCE needs num_negatives >= 1",
        ),
        (
            "Hydra",
            {"expand": 3, "ssd_headdim": 10},
            "expand * head_size (48) is not divisible by ssd_headdim (10)",
        ),
    ],
)
def test_bad_values_are_one_line_usage_errors(toy, model, overrides, message):
    with pytest.raises(UsageError) as error:
        config(toy, model, **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_key_of_another_model_is_not_checked(toy):
    config(toy, "Hydra", time_query="later")  # HSTU's key: Hydra never reads it


@pytest.mark.parametrize(
    "model,overrides,fix",
    [
        ("Hydra", {}, "change one of them or set head_size explicitly"),
        ("HSTU", {}, "change one of them or set attention_dim and linear_dim explicitly"),
        ("SASRecGen", {}, "change one of them"),
        ("SASRec", {}, "change one of them"),  # a RecBole model: its sizes are checked too
    ],
)
def test_hidden_size_must_be_divisible_by_n_heads(toy, model, overrides, fix):
    with pytest.raises(
        UsageError, match=r"hidden_size \(30\) is not divisible by n_heads \(4\)"
    ) as error:
        config(toy, model, hidden_size=30, n_heads=4, **overrides)
    assert str(error.value).endswith(fix)


def test_divisibility_is_not_needed_where_the_per_head_sizes_are_set(toy):
    config(toy, "Hydra", hidden_size=30, n_heads=4, head_size=8)
    config(toy, "HSTU", hidden_size=30, n_heads=4, attention_dim=8, linear_dim=8)
    config(toy, "Mamba4Rec", hidden_size=30, n_heads=4)  # Mamba4Rec has no heads


def test_zero_temperature_reaches_no_model(toy):
    """``temperature: 0`` used to become 1.0 through ``or 1.0``; it is rejected now, and a valid
    value is what the model gets."""
    with pytest.raises(UsageError, match="temperature"):
        config(toy, temperature=0)
    assert config(toy, temperature=0.5)["temperature"] == 0.5
