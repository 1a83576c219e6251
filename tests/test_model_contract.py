"""The contract every sequence model of the package keeps, checked on each model and its main
variants.

- ``forward(item_seq, item_seq_len, **inputs)`` is (B, L, hidden_size), causal, and blind to
  whatever follows the real items (RecBole right-pads);
- RecBole's ``calculate_loss`` (a finite scalar), ``full_sort_predict`` (B, n_items) and
  ``predict`` (B,), the latter equal to the matching column of ``full_sort_predict``;
- the loss reaches every parameter;
- a tiny model learns tiny fixed data: its training targets end up ranked first;
- bad settings and bad input are one clear error, where the model checks them.

What is particular to one model (reference equivalences, time buckets, defaults) stays in its
own file (test_hydra.py, test_hstu.py, test_mamba4rec.py, test_sasrec_gen.py, test_multidomain.py).
"""

from dataclasses import dataclass, field

import pytest
import torch
from recbole.data import data_preparation
from recbole.data.interaction import Interaction

from recbole_hydra.config import make_config
from recbole_hydra.errors import UsageError
from recbole_hydra.registry import build_model, create_dataset
from tests.conftest import quiet_config, random_sequences, write_domains, write_inter
from tests.model_helpers import (
    SMALL_HSTU,
    SMALL_HYDRA,
    assert_causal,
    assert_gradients_reach_every_parameter,
    assert_padding_invariant,
    overfit_recall_at_1,
    random_batch,
)

MAMBA4REC = dict(hidden_size=16, n_layers=2, d_state=8, chunk_size=4, dropout_prob=0.0)
SASRECGEN = dict(
    hidden_size=16,
    n_layers=2,
    n_heads=2,
    inner_size=32,
    hidden_dropout_prob=0.0,
    attn_dropout_prob=0.0,
    num_negatives=16,
)
#: the overfitting runs: a wider single layer, more negatives, none of them excluded
OVERFIT = dict(
    hidden_size=32,
    n_layers=1,
    num_negatives=64,
    exclude_history_negatives=False,
    MAX_ITEM_LIST_LENGTH=10,
    train_batch_size=20,
)
#: 20 users with fixed short sequences over 40 items (chance of ranking a target first: 1/40)
FIXED_ROWS = [(f"u{u}", f"i{(u * 7 + t * 3) % 40}", t) for u in range(20) for t in range(6)]
CE_DOT = dict(loss_type="CE", similarity="dot", temperature=1.0)
INFONCE_COSINE = dict(loss_type="InfoNCE", similarity="cosine", temperature=0.05)
BASE_CHECKS = [  # GenerativeSequentialRecommender's own, shared by every model
    (dict(loss_type="BPR"), "loss_type must be one of"),
    (dict(similarity="euclid"), "similarity must be one of"),
    (dict(temperature=-1.0), "temperature must be a number > 0"),
    (dict(loss_type="InfoNCE", num_negatives=0), "InfoNCE needs num_negatives >= 1"),
    (dict(loss_type="CE", seen_item_negatives=True), "seen_item_negatives is read by InfoNCE only"),
]
HEADS_CHECK = [(dict(hidden_size=30, n_heads=4), "not divisible by n_heads")]


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    config: dict
    multi_domain: bool = False
    times: bool = False  # forward needs the items' timestamps
    max_length_checked: bool = False  # forward refuses sequences longer than MAX_ITEM_LIST_LENGTH
    overfit_steps: int = 80
    overfit: dict = field(default_factory=dict)  # settings of the overfitting run beyond OVERFIT
    bad: tuple = ()  # (settings, message) that building the config refuses


CASES = [
    Case(
        "Hydra",
        "Hydra",
        SMALL_HYDRA,
        bad=tuple(
            BASE_CHECKS
            + HEADS_CHECK
            + [(dict(norm_placement="sandwich"), "norm_placement must be one of pre, post")]
        ),
    ),
    Case(
        "Hydra-layer_checkpointing",
        "Hydra",
        {**SMALL_HYDRA, "layer_checkpointing": True, "checkpoint_slices": 3},
    ),
    Case("Hydra-CE-dot", "Hydra", {**SMALL_HYDRA, **CE_DOT}),
    Case("Hydra-prefix", "Hydra", {**SMALL_HYDRA, "train_mode": "prefix"}),
    Case("Hydra-seen-negatives", "Hydra", {**SMALL_HYDRA, "seen_item_negatives": True}),
    Case("Hydra-no-gate", "Hydra", {**SMALL_HYDRA, "gate_with_z": False}),
    Case("Hydra-shared-bc", "Hydra", {**SMALL_HYDRA, "share_bc": True}),
    Case(
        "Hydra-no-rope-post-norm",
        "Hydra",
        {**SMALL_HYDRA, "rope_on_z": False, "norm_placement": "post"},
    ),
    Case(
        "HSTU",
        "HSTU",
        SMALL_HSTU,
        times=True,
        max_length_checked=True,
        bad=tuple(
            BASE_CHECKS + HEADS_CHECK + [(dict(time_query="future"), "time_query must be one of")]
        ),
    ),
    Case(
        "HSTU-prefix-CE-dot",
        "HSTU",
        {**SMALL_HSTU, "train_mode": "prefix", **CE_DOT},
        times=True,
        max_length_checked=True,
    ),
    Case("HSTU-no-time-bias", "HSTU", {**SMALL_HSTU, "time_bias": False}, max_length_checked=True),
    Case(
        "Mamba4Rec",
        "Mamba4Rec",
        MAMBA4REC,
        overfit_steps=200,  # the paper's: prefix, full softmax, dot
        bad=tuple(BASE_CHECKS + [(dict(n_layers=0), "n_layers must be")]),
    ),
    Case(
        "Mamba4Rec-generative-InfoNCE",
        "Mamba4Rec",
        {**MAMBA4REC, "train_mode": "generative", **INFONCE_COSINE, "num_negatives": 16},
        overfit_steps=200,
    ),
    Case(
        "SASRecGen",
        "SASRecGen",
        SASRECGEN,
        max_length_checked=True,
        bad=tuple(
            BASE_CHECKS
            + [
                (dict(hidden_size=30, n_heads=4), "not divisible"),
                (dict(hidden_act="tanh"), "hidden_act must be one of"),
            ]
        ),
    ),
    Case("SASRecGen-CE-dot", "SASRecGen", {**SASRECGEN, **CE_DOT}, max_length_checked=True),
    # HydraMD's forward is Hydra's (item_seq, item_seq_len), so the same contract holds; its
    # batches differ (merged and per-domain sequences), hence its own data and eval batches.
    Case(
        "HydraMD",
        "HydraMD",
        {**SMALL_HYDRA, "n_layers": 1, "topk": [1, 5], "valid_metric": "NDCG@1"},
        multi_domain=True,
        bad=tuple(
            BASE_CHECKS + [(dict(seen_item_negatives=True), "not by HydraMD's per-domain loss")]
        ),
    ),  # train_mode: test_multidomain.py
]
BY_ID = {case.id: case for case in CASES}


def md_rows(n_users=12, length=12):
    """Two domains, alternating; each user's items of a domain follow a fixed cycle."""
    rows = []
    for u in range(n_users):
        for t in range(length):
            dom = "books" if t % 2 else "movies"
            rows.append((f"u{u}", f"{dom[0]}{(u + (t // 2) * 5) % 12}", t, dom))
    return rows


def build(root, case, rows=None, **extra):
    """(config_dict, model, train, test) for ``case`` on toy data written under ``root``."""
    settings = {**case.config, **extra}
    if case.multi_domain:
        data = write_domains(root / "data", "md", rows or md_rows())
        config_dict = quiet_config(
            data, load_col={"inter": ["user_id", "item_id", "timestamp", "domain"]}, **settings
        )
    else:
        data = write_inter(root / "data", "toy", rows or random_sequences(20, 30, 3, 12))
        config_dict = quiet_config(data, **settings)
    config = make_config(case.model, dataset_name(case), config_dict=config_dict)
    train, _, test = data_preparation(config, create_dataset(config))
    return config_dict, build_model(config, train._dataset), train, test


def dataset_name(case):
    return "md" if case.multi_domain else "toy"


_BUILT = {}


@pytest.fixture
def built(request, tmp_path_factory):
    """One tiny model per case, built once for the module (the tests below change no weights)."""
    case = BY_ID[request.param]
    if case.id not in _BUILT:
        root = tmp_path_factory.mktemp(case.id)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            _BUILT[case.id] = build(root, case)
    return (case, *_BUILT[case.id])


def forward_inputs(case, model):
    """Keyword inputs of ``forward`` for ``random_batch(model)``'s (4, 10) batch."""
    if not case.times:
        return {}
    g = torch.Generator().manual_seed(0)
    gaps = torch.exp(torch.rand(4, 10, generator=g) * 14)  # 1 s .. ~14 days, increasing times
    return {"timestamps": 8.8e8 + gaps.cumsum(1)}


def eval_batch(test):
    return next(iter(test))[0]  # RecBole's full-sort loader: (interaction, history, users, items)


ids = [case.id for case in CASES]
each_model = pytest.mark.parametrize("built", ids, indirect=True)


@each_model
def test_forward_is_one_state_per_position_and_causal(built):
    case, _, model, _, _ = built
    inputs = forward_inputs(case, model)
    seq, lengths = random_batch(model)
    with torch.no_grad():
        assert model.eval()(seq, lengths, **inputs).shape == (
            *seq.shape,
            model.item_embedding.embedding_dim,
        )
    assert_causal(model, **inputs)


@each_model
def test_right_padding_invariant(built):
    case, _, model, _, _ = built
    assert_padding_invariant(model, **forward_inputs(case, model))


@each_model
def test_recbole_methods(built):
    case, _, model, train, test = built
    assert type(model).__name__ == case.model
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    model.eval()
    batch = eval_batch(test)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        assert scores.shape == (len(batch), model.n_items)
        # predict is full_sort_predict's column, for the targets and for other items
        targets = model.predict(batch)
        assert targets.shape == (len(batch),)
        torch.testing.assert_close(
            targets, scores.gather(1, batch[model.ITEM_ID].unsqueeze(1)).squeeze(1)
        )
        others = torch.randint(
            1, model.n_items, (len(batch),), generator=torch.Generator().manual_seed(1)
        )
        batch[model.ITEM_ID] = others
        torch.testing.assert_close(
            model.predict(batch), scores.gather(1, others.unsqueeze(1)).squeeze(1)
        )
    if case.multi_domain:  # each target ranked inside its own domain: finite there, -inf elsewhere
        in_domain = model.item_domain.unsqueeze(0) == batch[model.DOMAIN].unsqueeze(1)
        assert torch.equal(torch.isfinite(scores), in_domain)
    else:
        assert torch.isfinite(scores).all()


@each_model
def test_gradients_reach_every_parameter(built):
    _, _, model, train, _ = built
    assert_gradients_reach_every_parameter(model, train)
    model.zero_grad()


def md_training_targets(model, batch):
    """HydraMD's training targets, scored the way it predicts (eq 14): a merged window's target in
    domain s with the domain-s window that ends at the same target (the rows where both exist)."""
    target = batch[model.ITEM_ID]
    domain = model.item_domain[target]
    rows = torch.arange(len(target))
    col = domain - 1  # the per-domain columns are the domain ids 1, 2, ...
    keep = (batch[model.DOMAIN_TARGET][rows, col] == target) & (batch[model.MERGED_SEQ_LEN] > 0)
    interaction = Interaction(
        {
            model.ITEM_SEQ: batch[model.DOMAIN_SEQ][rows, col][keep],
            model.ITEM_SEQ_LEN: batch[model.DOMAIN_SEQ_LEN][rows, col][keep],
            model.MERGED_SEQ: batch[model.MERGED_SEQ][keep],
            model.MERGED_SEQ_LEN: batch[model.MERGED_SEQ_LEN][keep],
            model.DOMAIN: domain[keep],
            model.ITEM_ID: target[keep],
        }
    )
    return interaction, target[keep]


@pytest.mark.parametrize("case_id", ids)
def test_overfits_tiny_fixed_data(tmp_path, case_id):
    case = BY_ID[case_id]
    settings = {**OVERFIT, **case.overfit}
    if case.multi_domain:
        settings.pop("MAX_ITEM_LIST_LENGTH")
        _, model, train, _ = build(tmp_path, case, **settings)
        targets_of = md_training_targets
        assert sum(len(md_training_targets(model, b)[1]) for b in train) >= 10  # enough rows scored
    else:
        _, model, train, _ = build(tmp_path, case, rows=FIXED_ROWS, **settings)
        targets_of = None
    assert (
        overfit_recall_at_1(model, train, steps=case.overfit_steps, targets_of=targets_of) >= 0.95
    )


BAD_SETTINGS = [
    pytest.param(case.id, settings, message, id=f"{case.id}-{'-'.join(settings)}")
    for case in CASES
    for settings, message in case.bad
]


@pytest.mark.parametrize("built,settings,message", BAD_SETTINGS, indirect=["built"])
def test_bad_settings_are_one_clear_error(built, settings, message):
    """Refused in one line when the config is built (the models rely on that one check)."""
    case, good, _, train, _ = built
    with pytest.raises(UsageError, match=message):
        make_config(case.model, dataset_name(case), config_dict={**good, **settings})


BAD_FORWARD = [
    pytest.param(case.id, "no timestamps", id=f"{case.id}-no-timestamps")
    for case in CASES
    if case.times
] + [
    pytest.param(case.id, "too long", id=f"{case.id}-too-long")
    for case in CASES
    if case.max_length_checked
]


@pytest.mark.parametrize("built,bad", BAD_FORWARD, indirect=["built"])
def test_bad_forward_input_is_one_clear_error(built, bad):
    case, _, model, _, _ = built
    seq, lengths = random_batch(model)
    inputs = forward_inputs(case, model)
    if bad == "no timestamps":
        with pytest.raises(ValueError, match="pass timestamps"):
            model(seq, lengths)
    else:
        longer = torch.nn.functional.pad(seq, (0, model.max_seq_length + 1 - seq.size(1)))
        inputs = {
            k: torch.nn.functional.pad(v, (0, longer.size(1) - v.size(1)))
            for k, v in inputs.items()
        }
        with pytest.raises(ValueError, match="exceeds MAX_ITEM_LIST_LENGTH"):
            model(longer, lengths, **inputs)
        model(
            longer[:, : model.max_seq_length],
            lengths,
            **{k: v[:, : model.max_seq_length] for k, v in inputs.items()},
        )
