"""Hydra with an item LLM (paper section 4.1.2): item text, [ITEM], fine-tuning modes, one
encoding per item per step, the evaluation table, export, errors.

Most tests use tiny randomly initialised LLMs (a BERT-like encoder and a Llama-like decoder, with
the bundled MiniLM tokenizer) written to a temporary folder: they load like any local model and
run in milliseconds. The end-to-end test uses the default, the bundled all-MiniLM-L6-v2."""

import shutil
from pathlib import Path

import pytest
import torch
from recbole.data import data_preparation

from recbole_hydra.checkpoint import export_item_table, load_item_table, read_checkpoint
from recbole_hydra.checkpoint import main as export_main
from recbole_hydra.config import make_config
from recbole_hydra.data.item_text import item_texts
from recbole_hydra.errors import UsageError
from recbole_hydra.layers import item_llm
from recbole_hydra.layers.item_llm import ITEM_TOKEN
from recbole_hydra.quick_start import evaluate_checkpoint, run
from recbole_hydra.registry import build_model, create_dataset
from tests.conftest import ML100K, ml100k_slice, quiet_config, random_sequences, write_inter

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

SMALL = dict(
    hidden_size=16,
    n_layers=1,
    n_heads=2,
    d_state=8,
    chunk_size=4,
    num_negatives=16,
    dropout_prob=0.0,
    MAX_ITEM_LIST_LENGTH=10,
    item_model="llm",
    item_text_max_tokens=16,
    llm_batch_size=8,
)
TOY_LOAD_COL = {
    "inter": ["user_id", "item_id", "timestamp"],
    "item": ["item_id", "title", "genre", "year"],
}
LONG_TITLE = "a very long title that goes on and on " * 10


def write_toy(root, n_items=25, with_item_file=True):
    rows = random_sequences(12, n_items, 4, 10)
    root = write_inter(root, "toy", rows)
    if with_item_file:
        lines = ["item_id:token\ttitle:token\tgenre:token_seq\tyear:float"]
        for i in range(n_items):
            title = (
                LONG_TITLE
                if i == 3
                else f"Title {i} [ITEM] here"
                if i == 4
                else f"Title number {i}"
            )
            genre = ["Action Sci_Fi", "Drama", "Comedy Romance"][i % 3]
            lines.append(f"i{i}\t{title}\t{genre}\t{1980 + i}")
        (Path(root) / "toy" / "toy.item").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_llms(tmp_path_factory):
    """Folders with a tiny random BERT (encoder) and a tiny random Llama (decoder)."""
    root = tmp_path_factory.mktemp("llms")
    tokenizer_src = Path(item_llm.default_llm_path())
    folders = {}
    torch.manual_seed(0)
    configs = {
        "bert": transformers.BertConfig(
            vocab_size=30522,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
        ),
        "llama": transformers.LlamaConfig(
            vocab_size=30522,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
        ),
    }
    for name, config in configs.items():
        folder = root / name
        transformers.AutoModel.from_config(config).save_pretrained(folder)
        for f in (
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ):
            shutil.copy(tokenizer_src / f, folder / f)
        folders[name] = str(folder)
    return folders


def build(tmp_path, llm_path, load_col=TOY_LOAD_COL, with_item_file=True, **overrides):
    root = write_toy(tmp_path / "data", with_item_file=with_item_file)
    config = make_config(
        "Hydra",
        "toy",
        config_dict=quiet_config(
            root, load_col=load_col, llm_path=llm_path, **{**SMALL, **overrides}
        ),
    )
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return build_model(config, train._dataset), train, test, config


def spy_llm(encoder):
    """Record the ids of every LLM call of ``encoder``."""
    calls, run_llm = [], encoder._run_llm

    def spy(ids):
        calls.append(ids.tolist())
        return run_llm(ids)

    encoder._run_llm = spy
    return calls


# -- text and [ITEM] ---------------------------------------------------------------------------
def test_item_text_and_item_token_once_at_the_end(tmp_path, tiny_llms):
    model, train, _, _ = build(tmp_path, tiny_llms["bert"], item_text_max_tokens=12)
    dataset = train._dataset
    texts = item_texts(dataset, ["title", "genre", "year"], "Describe: ")
    i1 = dataset.token2id("item_id", "i1")
    assert texts[i1] == "Describe: title: Title number 1. genre: Drama. year: 1981."
    assert texts[dataset.token2id("item_id", "i0")].endswith("genre: Action Sci Fi. year: 1980.")
    assert ITEM_TOKEN not in texts[dataset.token2id("item_id", "i4")]  # literal [ITEM] defused
    enc = model.item_encoder
    ids, lengths = enc.token_ids, enc.token_lengths
    assert (
        int(lengths.max()) <= 12 and lengths[dataset.token2id("item_id", "i3")] == 12
    )  # truncated
    for i in range(1, enc.n_items):
        row = ids[i, : lengths[i]]
        assert int(row[-1]) == enc.item_token_id and int((row == enc.item_token_id).sum()) == 1
        assert not (ids[i, lengths[i] :] == enc.item_token_id).any()
    tokenizer_ids = ids[i1, : lengths[i1]].tolist()
    assert tokenizer_ids[0] == 101 and tokenizer_ids[-2] == 102  # BERT: [CLS] text [SEP] [ITEM]


# -- fine-tuning modes ---------------------------------------------------------------------------
def _llm_grads(model, batch):
    model.train()
    model.zero_grad()
    model.calculate_loss(batch).backward()
    return {n: p for n, p in model.item_encoder.llm.named_parameters()}


def test_full_finetuning_reaches_every_llm_weight(tmp_path, tiny_llms):
    model, train, _, _ = build(tmp_path, tiny_llms["bert"], llm_finetune="full")
    params = _llm_grads(model, next(iter(train)))
    missing = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert model.item_encoder.proj.weight.grad.abs().sum() > 0  # 24 -> 16 projection


def test_lora_trains_only_adapters_and_the_item_token(tmp_path, tiny_llms):
    model, train, _, _ = build(tmp_path, tiny_llms["bert"], llm_finetune="lora", lora_r=4)
    params = _llm_grads(model, next(iter(train)))
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert all(p.grad is None for n, p in params.items() if n not in trainable)
    assert all(params[n].grad is not None for n in trainable)
    assert any(params[n].grad.abs().sum() > 0 for n in trainable if "lora_B" in n)
    assert any(params[n].grad.abs().sum() > 0 for n in trainable if "trainable_tokens" in n)


def test_frozen_llm_gets_no_gradient_and_is_encoded_once(tmp_path, tiny_llms):
    model, train, _, _ = build(tmp_path, tiny_llms["bert"], llm_finetune="frozen")
    calls = spy_llm(model.item_encoder)
    batch = next(iter(train))
    params = _llm_grads(model, batch)
    assert all(not p.requires_grad and p.grad is None for p in params.values())
    assert model.item_encoder.proj.weight.grad.abs().sum() > 0
    assert not model.item_encoder.llm.training  # no dropout in a frozen feature extractor
    model.calculate_loss(batch)
    assert len(calls) == 1 and sorted(calls[0]) == list(range(1, model.n_items))  # all items, once


# -- one encoding per item per step, the evaluation table ------------------------------------------
def test_each_distinct_item_is_encoded_once_per_training_step(tmp_path, tiny_llms):
    model, train, _, _ = build(tmp_path, tiny_llms["bert"], llm_finetune="full", llm_batch_size=4)
    calls = spy_llm(model.item_encoder)
    model.train()
    batch = next(iter(train))
    model.calculate_loss(batch).backward()
    encoded = [i for call in calls for i in call]
    assert len(encoded) == len(set(encoded)) and 0 not in encoded
    seq = batch[model.ITEM_SEQ]
    assert set(seq[seq > 0].tolist()) | set(batch[model.POS_ITEM_ID].tolist()) <= set(encoded)
    assert len(calls) <= 2  # the sequence items, then the positives and negatives not among them
    calls.clear()
    model.calculate_loss(batch)  # a new step encodes again (the weights may have changed)
    assert len([i for call in calls for i in call]) == len(encoded)


@pytest.mark.parametrize("llm", ["bert", "llama"])
def test_eval_table_equals_items_encoded_one_by_one_and_is_reused(tmp_path, tiny_llms, llm):
    model, train, test, _ = build(tmp_path, tiny_llms[llm], llm_finetune="lora", lora_r=4)
    enc = model.item_encoder
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    model.calculate_loss(next(iter(train))).backward()
    opt.step()  # LoRA's B is no longer zero: the adapters change the table
    model.eval()
    calls = spy_llm(enc)
    table = model._item_table()
    with torch.no_grad():
        one_by_one = torch.stack(
            [enc.encode(torch.tensor([i]))[0] for i in range(1, model.n_items)]
        )
    torch.testing.assert_close(table[1:], one_by_one, rtol=1e-5, atol=1e-5)
    assert torch.equal(table[0], torch.zeros_like(table[0]))
    calls.clear()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        pointwise = model.predict(batch)  # the same table through _item_vectors
    assert not calls and model._item_table() is table  # reused, no LLM call
    torch.testing.assert_close(pointwise, scores[torch.arange(len(batch)), batch[model.ITEM_ID]])
    model.train()  # training resumes: the table is dropped and recomputed at the next eval
    model.calculate_loss(next(iter(train))).backward()
    opt.step()
    model.eval()
    assert not torch.allclose(model._item_table(), table)
    with torch.no_grad():  # weights written in place while in eval mode: recomputed too
        next(p for p in enc.parameters() if p.requires_grad).add_(0.1)
    calls.clear()
    model._item_table()
    assert calls


# -- export ----------------------------------------------------------------------------------------
def test_exported_table_reproduces_scores_without_the_llm(tmp_path, tiny_llms):
    model, train, test, config = build(tmp_path, tiny_llms["bert"], llm_finetune="full")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    model.calculate_loss(next(iter(train))).backward()
    opt.step()
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        expected = model.full_sort_predict(batch)
    table = export_item_table(model, tmp_path / "table.pt")
    config["item_model"] = "embedding"
    plain = build_model(config, train._dataset).eval()
    assert plain.item_encoder is None and not any("llm" in n for n, _ in plain.named_parameters())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("item_encoder.")}
    plain.load_state_dict({**state, "item_embedding.weight": table})
    load_item_table(plain, tmp_path / "table.pt")
    with torch.no_grad():
        torch.testing.assert_close(plain.full_sort_predict(batch), expected, rtol=0, atol=1e-6)


def write_slice_items(root, name="ml-100k-slice"):
    """ml-100k's .item rows for the items of the slice."""
    folder = Path(root) / name
    items = {
        line.split("\t")[1] for line in (folder / f"{name}.inter").read_text().splitlines()[1:]
    }
    lines = (ML100K.parent / "ml-100k.item").read_text().splitlines()
    keep = [lines[0]] + [line for line in lines[1:] if line.split("\t")[0] in items]
    (folder / f"{name}.item").write_text("\n".join(keep) + "\n")


def test_end_to_end_ml100k_with_bundled_minilm_and_export(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=10)
    write_slice_items(data)
    config = quiet_config(
        data,
        hidden_size=16,
        n_layers=1,
        n_heads=2,
        d_state=8,
        chunk_size=8,
        num_negatives=32,
        MAX_ITEM_LIST_LENGTH=20,
        item_model="llm",
        llm_finetune="frozen",
        item_text_max_tokens=12,
        item_prompt="Movie: ",
        item_text_fields=["movie_title", "release_year", "class"],
        checkpoint_dir=str(tmp_path / "saved"),
        load_col={
            "inter": ["user_id", "item_id", "timestamp"],
            "item": ["item_id", "movie_title", "release_year", "class"],
        },
    )
    result = run("Hydra", "ml-100k-slice", config_dict=config)
    assert result["epochs"] == 1 and all(0 <= v <= 1 for v in result["test_result"].values())
    exported, table_file = str(tmp_path / "exported.pth"), str(tmp_path / "table.pt")
    export_main([result["model_file"], exported, "--table", table_file])  # the export command
    table = torch.load(table_file, weights_only=True)
    assert table.shape[1] == 16
    checkpoint = read_checkpoint(exported)
    assert checkpoint["config"]["item_model"] == "embedding" and checkpoint["resume"] is None
    assert not any(k.startswith("item_encoder.") for k in checkpoint["state_dict"])
    again = evaluate_checkpoint(exported, show_progress=False)
    assert again["test_result"] == result["test_result"]


def test_item_text_fields_load_by_themselves(tmp_path, tiny_llms):
    """Without load_col for the .item file, item_model: llm loads its columns (floats only where
    normalize_all does not rescale them into meaningless numbers): one tiny epoch from the
    command line, no yaml."""
    import run_hydra

    assert make_config("Hydra", "ml-100k", config_dict={"item_model": "llm"})["load_col"] == {
        "inter": ["user_id", "item_id", "rating", "timestamp"],
        "item": ["item_id", "movie_title", "release_year", "class"],
    }
    root = write_toy(tmp_path / "data")
    inter_only = {"inter": ["user_id", "item_id", "timestamp"]}
    config = make_config("Hydra", "toy", config_dict=quiet_config(root, item_model="llm"))
    assert config["load_col"] == {**inter_only, "item": ["item_id", "title", "genre", "year"]}
    rescaled = quiet_config(root, item_model="llm", normalize_all=True)
    config = make_config("Hydra", "toy", config_dict=rescaled)
    assert config["load_col"] == {**inter_only, "item": ["item_id", "title", "genre"]}
    overrides = {**SMALL, "llm_path": tiny_llms["bert"], "llm_finetune": "frozen"}
    argv = [f"--{key}={value}" for key, value in overrides.items()] + [
        "--dataset=toy",
        f"--data_path={root}",
        f"--load_col={inter_only}",
        "--epochs=1",
        "--topk=[5]",
        "--valid_metric=NDCG@5",
        "--show_progress=False",
        "--state=ERROR",
        f"--checkpoint_dir={tmp_path / 'saved'}",
    ]
    assert run_hydra.main(argv) == 0


# -- errors ----------------------------------------------------------------------------------------
def test_missing_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match="llm_path .*does not exist"):
        build(tmp_path, str(tmp_path / "no-such-model"))


def test_name_not_in_local_cache_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UsageError, match="not found in the local Hugging Face cache"):
        build(tmp_path, "someone/not-a-cached-model")


def test_dataset_without_item_text_is_one_clear_error(tmp_path, tiny_llms):
    with pytest.raises(UsageError, match="no item features were loaded.*load_col"):
        build(
            tmp_path,
            tiny_llms["bert"],
            load_col={"inter": ["user_id", "item_id", "timestamp"]},
            with_item_file=False,
        )
    with pytest.raises(
        UsageError, match=r"item_text_fields \['plot'\] not among .*title, genre, year"
    ):
        build(tmp_path, tiny_llms["bert"], item_text_fields=["title", "plot"])
