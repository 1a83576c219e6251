"""The Amazon Reviews 2023 converter: upstream formats in, RecBole atomic files out."""

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recbole_hydra.data import amazon2023
from recbole_hydra.data.amazon2023 import convert, main
from recbole_hydra.data.catalogue import missing_dataset_hint

T0 = 1_588_615_855_070  # a millisecond timestamp as the dataset publishes them
TEXT = {
    "title": 'Vinyl 12" "Deluxe"\tEdition\nRemastered',
    "main_category": "Books",
    "categories": ["Books", "Literature & Fiction", " Genre\tFiction "],
    "description": ["First  paragraph.", "Second\r\nparagraph."],
    "store": None,
}


def random_rows(n_users=80, n_items=40, seed=0, max_len=14):
    """(user, parent_asin, rating, ms) rows with a skew on items and some exact duplicates."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    rows = []
    for u in range(n_users):
        for _ in range(int(rng.integers(1, max_len))):
            item = int(rng.choice(n_items, p=weights))
            rows.append(
                (
                    f"AG{u:05d}XYZ",
                    f"B{item:09d}",
                    float(rng.integers(1, 6)),
                    T0 + int(rng.integers(0, 10**6)) * 7,
                )
            )
    for j in rng.choice(len(rows), 15, replace=False):  # repeated (user, item, time)
        rows.append(rows[int(j)][:2] + (5.0,) + rows[int(j)][3:])
    order = rng.permutation(len(rows))
    return [rows[j] for j in order]


def write_csv(path, rows, header="user_id,parent_asin,rating,timestamp"):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


def write_reviews(path, rows):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for user, item, rating, ms in rows:
            f.write(
                json.dumps(
                    {
                        "rating": rating,
                        "title": "Great\tbook",
                        "text": "I liked it.\n",
                        "images": [],
                        "asin": item,
                        "parent_asin": item,
                        "user_id": user,
                        "timestamp": ms,
                        "helpful_vote": 0,
                        "verified_purchase": True,
                    }
                )
                + "\n"
            )
    return path


def write_meta(path, items, text=TEXT):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for item in items:
            f.write(
                json.dumps(
                    dict(
                        text,
                        parent_asin=item,
                        average_rating=4.5,
                        rating_number=3,
                        features=[],
                        price=None,
                        images=[],
                        videos=[],
                        details={"Pages": 300},
                        bought_together=None,
                    )
                )
                + "\n"
            )
    return path


def reference(rows, k=5):
    """Pure Python: drop repeated (user, item, time), then k-core until nothing changes."""
    seen, kept = set(), []
    for row in rows:
        if (row[0], row[1], row[3]) not in seen:
            seen.add((row[0], row[1], row[3]))
            kept.append(row)
    while True:
        users, items = Counter(r[0] for r in kept), Counter(r[1] for r in kept)
        left = [r for r in kept if users[r[0]] >= k and items[r[1]] >= k]
        if len(left) == len(kept):
            return kept
        kept = left


def read_inter(folder, name="amazon-books"):
    lines = (Path(folder) / name / f"{name}.inter").read_text().splitlines()
    return lines[0], [tuple(line.split("\t")) for line in lines[1:]]


def run_convert(raw, out="out", **kwargs):
    kwargs.setdefault("category", "Books")
    return convert(kwargs.pop("category"), raw, out, **kwargs)


def test_csv_and_jsonl_plain_and_gz_give_the_reference_5_core(tmp_path):
    rows = random_rows()
    outputs = []
    for name in ("Books.csv", "Books.csv.gz", "Books.jsonl", "Books.jsonl.gz"):
        raw = tmp_path / name.replace(".", "_")
        raw.mkdir()
        (write_csv if ".csv" in name else write_reviews)(raw / name, rows)
        stats = run_convert(raw, tmp_path / f"out_{name}")
        outputs.append(
            (tmp_path / f"out_{name}" / "amazon-books" / "amazon-books.inter").read_bytes()
        )
    assert len(set(outputs)) == 1

    expected = reference(rows)
    header, got = read_inter(tmp_path / "out_Books.csv")
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert Counter((u, i, float(r), float(t)) for u, i, r, t in got) == Counter(
        (u, i, r, ms / 1000) for u, i, r, ms in expected
    )
    keys = [(u, float(t), i) for u, i, _, t in got]
    assert keys == sorted(keys)  # by user, then time, then item
    assert stats["duplicates"] == len(rows) - len({(r[0], r[1], r[3]) for r in rows}) > 0
    assert stats["kcore_dropped"] > 0 and stats["interactions"] == len(expected)
    assert stats["users"] == len({r[0] for r in expected})
    assert stats["items"] == len({r[1] for r in expected})


def test_kcore_matches_brute_force_on_a_random_graph():
    rng = np.random.default_rng(3)
    for trial in range(5):
        n_users, n_items, n = 300, 120, 2500
        users = rng.integers(0, n_users, n) ** 2 % n_users  # skewed
        items = (rng.zipf(1.3, n) - 1) % n_items
        rows, _ = amazon2023.kcore(users, items, n_users, n_items, 4)
        expected = reference([(u, i, 1.0, j) for j, (u, i) in enumerate(zip(users, items))], 4)
        assert [int(j) for j in rows] == [r[3] for r in expected]


def test_timestamps_are_seconds_with_milliseconds_kept(tmp_path):
    base = 1_588_615_855_000
    rows = [
        (f"U{u}", f"I{i}", 4.0, base + 1000 * (5 * u + i) + (70 if i == 0 else 0))
        for u in range(5)
        for i in range(5)
    ]
    write_csv(tmp_path / "Books.csv", rows)
    run_convert(tmp_path)
    _, got = read_inter("out")
    stamps = {(u, i): t for u, i, _, t in got}
    assert stamps["U0", "I0"] == "1588615855.07"
    assert stamps["U0", "I1"] == "1588615856"
    assert float(stamps["U4", "I4"]) == (base + 24_000) / 1000


def test_many_small_blocks_and_id_merges_give_the_same_bytes(tmp_path, monkeypatch):
    rows = random_rows(n_users=150, n_items=60, seed=5)
    write_csv(tmp_path / "Books.csv", rows)
    run_convert(tmp_path, "big")
    monkeypatch.setattr(amazon2023.IdCoder, "MIN_MERGE", 1)
    run_convert(tmp_path, "small", block_bytes=300)
    name = "amazon-books/amazon-books.inter"
    assert (tmp_path / "big" / name).read_bytes() == (tmp_path / "small" / name).read_bytes()


def test_line_by_line_parser_agrees_with_arrow(tmp_path, monkeypatch):
    rows = random_rows(seed=7)
    write_csv(tmp_path / "Books.csv", rows)
    (tmp_path / "j").mkdir()
    write_reviews(tmp_path / "j" / "Books.jsonl", rows)
    write_meta(tmp_path / "meta_Books.jsonl", sorted({r[1] for r in rows}))
    write_meta(tmp_path / "j" / "meta_Books.jsonl", sorted({r[1] for r in rows}))
    run_convert(tmp_path, "arrow")
    run_convert(tmp_path / "j", "arrow_json")
    monkeypatch.setattr(amazon2023._CsvFormat, "fast", lambda *a: None)
    monkeypatch.setattr(amazon2023._JsonFormat, "fast", lambda *a: None)
    monkeypatch.setattr(amazon2023._JsonFormat, "table", lambda *a: None)
    run_convert(tmp_path, "python")
    run_convert(tmp_path / "j", "python_json")
    for suffix in ("inter", "item"):
        files = {
            (tmp_path / out / "amazon-books" / f"amazon-books.{suffix}").read_bytes()
            for out in ("arrow", "arrow_json", "python", "python_json")
        }
        assert len(files) == 1


def test_rerun_writes_the_same_bytes(tmp_path):
    rows = random_rows(seed=1)
    write_csv(tmp_path / "Books.csv.gz", rows)
    write_meta(tmp_path / "meta_Books.jsonl.gz", sorted({r[1] for r in rows}))
    assert main(["--category", "Books", "--raw", str(tmp_path), "--out", "out", "--quiet"]) == 0
    folder = tmp_path / "out" / "amazon-books"
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert (
        main(["--category", "amazon-books", "--raw", str(tmp_path), "--out", "out", "--quiet"]) == 0
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    assert sorted(first) == ["amazon-books.inter", "amazon-books.item"]


def test_item_file_has_surviving_items_and_clean_text(tmp_path):
    rows = random_rows(seed=2)
    write_csv(tmp_path / "Books.csv", rows)
    items = sorted({r[1] for r in rows})
    write_meta(tmp_path / "meta_Books.jsonl", items[1:] + items[1:2])  # one without, one twice
    stats = run_convert(tmp_path)
    lines = (tmp_path / "out" / "amazon-books" / "amazon-books.item").read_text().split("\n")
    assert lines[0] == (
        "item_id:token\ttitle:token\tmain_category:token\t"
        "categories:token_seq\tdescription:token\tstore:token"
    )
    assert lines[-1] == ""
    parsed = list(csv.reader(lines[1:-1], delimiter="\t"))
    survivors = {r[1] for r in reference(rows)}
    assert sorted(p[0] for p in parsed) == sorted(survivors)
    assert stats["items_with_meta"] == len(survivors - {items[0]})
    full = next(p for p in parsed if p[0] != items[0])
    assert full[1:] == [
        'Vinyl 12" "Deluxe" Edition Remastered',
        "Books",
        "Books Literature_&_Fiction Genre_Fiction",
        "First paragraph. Second paragraph.",
        "",
    ]
    if items[0] in survivors:
        assert next(p for p in parsed if p[0] == items[0])[1:] == [""] * 5


def test_split_files_are_used_only_without_the_full_csv(tmp_path):
    rows = list({(r[0], r[1], r[3]): r for r in random_rows(seed=4)}.values())  # no repeats
    thirds = [rows[0::3], rows[1::3], rows[2::3]]
    header = "user_id,parent_asin,rating,timestamp,history"
    for split, part in zip(("train", "valid", "test"), thirds):
        write_csv(tmp_path / f"Books.{split}.csv", [r + ("B1 B2",) for r in part], header)
    stats = run_convert(tmp_path, "splits")
    assert [Path(p).name for p in stats["inputs"]] == [
        "Books.train.csv",
        "Books.valid.csv",
        "Books.test.csv",
    ]
    write_csv(tmp_path / "Books.csv", rows)
    stats = run_convert(tmp_path, "full")
    assert [Path(p).name for p in stats["inputs"]] == ["Books.csv"]
    name = "amazon-books/amazon-books.inter"
    assert (tmp_path / "splits" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


BAD_CSV = [("not-a-number", "non-numeric timestamp"), ("", "missing timestamp")]


@pytest.mark.parametrize("bad, reason", BAD_CSV)
def test_malformed_csv_fails_with_file_and_line(tmp_path, capsys, bad, reason):
    rows = random_rows(seed=6)
    path = write_csv(
        tmp_path / "Books.csv", rows[:10] + [("U1", "B000000001", 5.0, bad)] + rows[10:]
    )
    assert main(["--category", "Books", "--raw", str(tmp_path), "--out", "out", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}:12: {reason}" in err and "--on-error skip" in err
    assert not (tmp_path / "out").exists()


def test_malformed_lines_are_skipped_and_counted(tmp_path, capsys):
    rows = random_rows(seed=6)
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    clean.mkdir(), broken.mkdir()
    write_reviews(clean / "Books.jsonl", rows)
    write_reviews(broken / "Books.jsonl", rows)
    lines = (broken / "Books.jsonl").read_text().splitlines()
    lines[3:3] = [
        '{"user_id": "U1", "parent_asin": "B1", "rating": 5.0,',  # bad JSON
        json.dumps({"user_id": "U1", "parent_asin": "B1", "rating": 1.0}),
        json.dumps({"user_id": "U1", "parent_asin": "B1", "rating": 1.0, "timestamp": "yesterday"}),
        "",
    ]
    (broken / "Books.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["--category", "Books", "--raw", str(broken), "--out", "o", "--quiet"]) == 2
    assert f"{broken / 'Books.jsonl'}:4: bad JSON" in capsys.readouterr().err
    assert (
        main(["--category", "Books", "--raw", str(broken), "--out", "o", "--on-error", "skip"]) == 0
    )
    out, err = capsys.readouterr()
    assert "Books.jsonl:5: missing timestamp" in err and "Books.jsonl:6: non-numeric" in err
    assert "dropped 3 malformed (1 bad JSON, 1 missing timestamp, 1 non-numeric timestamp)" in out
    assert "duplicates" in out and "by the 5-core filter" in out
    run_convert(clean, "c")
    name = "amazon-books/amazon-books.inter"
    assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_a_bad_line_in_a_large_block_is_found_by_halving(tmp_path, monkeypatch):
    rows = list({(r[0], r[1], r[3]): r for r in random_rows(n_users=400, seed=11)}.values())
    assert len(rows) > 2000
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    clean.mkdir(), broken.mkdir()
    write_csv(clean / "Books.csv", rows)
    write_csv(broken / "Books.csv", rows[:1500] + [("U1", "B1", "five", T0)] + rows[1500:])
    slow_lines = []
    original = amazon2023._CsvFormat.slow

    def spy(self, block, first_line, problems):
        slow_lines.append(block.count(b"\n"))
        return original(self, block, first_line, problems)

    monkeypatch.setattr(amazon2023._CsvFormat, "slow", spy)
    run_convert(clean, "c")
    assert slow_lines == []
    with pytest.raises(amazon2023.ConvertError, match=r"Books.csv:1502: non-numeric rating"):
        run_convert(broken, "b")
    stats = run_convert(broken, "b", on_error="skip")
    assert stats["malformed"] == {"non-numeric rating": 1}
    assert sum(slow_lines) <= 2 * amazon2023.SMALL_BLOCK_LINES + 2
    name = "amazon-books/amazon-books.inter"
    assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_missing_column_and_missing_files_are_one_line_errors(tmp_path, capsys):
    write_csv(tmp_path / "Books.csv", [("U1", "B1", 5.0)], "user_id,parent_asin,rating")
    assert main(["--category", "Books", "--raw", str(tmp_path), "--quiet"]) == 2
    assert f"{tmp_path / 'Books.csv'}:1: no 'timestamp' column" in capsys.readouterr().err
    assert main(["--category", "Video_Games", "--raw", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Video_Games.csv[.gz]" in err and "Video_Games.jsonl[.gz]" in err
    assert len(err.strip().splitlines()) == 1


def test_interrupted_write_leaves_no_inter(tmp_path, monkeypatch):
    rows = random_rows(seed=8)
    write_csv(tmp_path / "Books.csv", rows)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(amazon2023, "_write_item", interrupted)
        assert main(["--category", "Books", "--raw", str(tmp_path), "--out", "a", "--quiet"]) == 130
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").rglob("*"))

    # An existing complete output survives a run interrupted before its final renames...
    run_convert(tmp_path, "b")
    folder = tmp_path / "b" / "amazon-books"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_csv(tmp_path / "Books.csv", rows[: len(rows) // 2])
    with monkeypatch.context() as m:
        m.setattr(amazon2023, "_write_item", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_convert(tmp_path, "b")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # ... and a failure during the renames never leaves an old .inter beside a new .item.
    with monkeypatch.context() as m:
        m.setattr(amazon2023.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError):
            run_convert(tmp_path, "b")
    left = {p.name for p in folder.iterdir()}
    assert "amazon-books.inter" not in left and not any(".partial" in n for n in left)
    run_convert(tmp_path, "b")
    assert {p.name for p in folder.iterdir()} == set(before)


def test_missing_dataset_hint(tmp_path):
    hint = missing_dataset_hint("amazon-books", "dataset/amazon-books")
    assert "\n" not in hint
    for text in (
        "Books.jsonl.gz",
        "meta_Books.jsonl.gz",
        "Books.csv.gz",
        "https://amazon-reviews-2023.github.io/",
        "dataset/raw",
        "python -m recbole_hydra.data.amazon2023 --category Books --raw dataset/raw --out dataset",
    ):
        assert text in hint
    assert "--category Toys_and_Games" in missing_dataset_hint(
        "amazon-toys-games", "d/amazon-toys-games"
    )
    assert missing_dataset_hint("ml-100k", "dataset/ml-100k") is None
    (tmp_path / "amazon-movies-tv").mkdir()
    (tmp_path / "amazon-movies-tv" / "amazon-movies-tv.inter").write_text("user_id:token\n")
    assert missing_dataset_hint("amazon-movies-tv", str(tmp_path / "amazon-movies-tv")) is None


def test_every_dataset_has_properties():
    import yaml

    from recbole_hydra.config import PROPERTIES

    props = PROPERTIES / "dataset"

    for name in amazon2023.DATASETS:
        config = yaml.safe_load((props / f"{name}.yaml").read_text())
        assert config["load_col"] == {"inter": ["user_id", "item_id", "rating", "timestamp"]}
        assert config["MAX_ITEM_LIST_LENGTH"] == 50


def _train_rows():
    rows = random_rows(n_users=120, n_items=60, seed=9, max_len=16)
    return rows


def test_recbole_loads_the_output_and_hydra_trains_on_it(tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    from recbole_hydra.quick_start import run

    rows = _train_rows()
    write_csv(tmp_path / "Books.csv", rows)
    write_meta(tmp_path / "meta_Books.jsonl", sorted({r[1] for r in rows}))
    stats = run_convert(tmp_path, "data")

    config = Config(
        model="SASRec",
        dataset="amazon-books",
        config_dict={
            "data_path": "data",
            "state": "ERROR",
            "show_progress": False,
            "train_neg_sample_args": None,
            "load_col": {
                "inter": ["user_id", "item_id", "rating", "timestamp"],
                "item": ["item_id", "title", "categories", "description", "store"],
            },
        },
    )
    dataset = create_dataset(config)
    assert dataset.inter_num == stats["interactions"] and dataset.item_num == stats["items"] + 1
    assert 'Vinyl 12" "Deluxe" Edition Remastered' in dataset.field2id_token["title"]
    assert "Literature_&_Fiction" in dataset.field2id_token["categories"]
    assert float(dataset.inter_feat["timestamp"].min()) > 1.5e9  # seconds, not milliseconds

    tiny = dict(
        hidden_size=16,
        n_layers=1,
        n_heads=2,
        d_state=8,
        chunk_size=8,
        num_negatives=16,
        epochs=1,
        train_batch_size=64,
    )
    result = run(
        "Hydra",
        "amazon-books",
        config_dict={
            "data_path": "data",
            "show_progress": False,
            "state": "ERROR",
            "seed": 7,
            "topk": [10],
            **tiny,
        },
        saved=False,
    )
    assert result["epochs"] == 1
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_run_hydra_names_the_files_to_download(tmp_path):
    from recbole_hydra.config import make_config
    from recbole_hydra.errors import UsageError

    with pytest.raises(UsageError, match="meta_Books.jsonl.gz"):
        make_config("Hydra", "amazon-books", config_dict={"data_path": str(tmp_path)})
