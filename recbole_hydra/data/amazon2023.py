"""Amazon Reviews 2023 (Books, Movies & TV, Video Games, Toys & Games) as RecBole atomic files.

    python -m recbole_hydra.data.amazon2023 --category Books --raw RAW --out dataset

reads, from the folder RAW, the files as https://amazon-reviews-2023.github.io/ publishes them
(plain or ``.gz``):

* interactions, the first of: the rating-only CSV ``Books.csv`` (``user_id,parent_asin,rating,
  timestamp``), the review JSONL ``Books.jsonl`` (only ``user_id``, ``parent_asin``, ``rating``,
  ``timestamp`` are read), or the three benchmark split files ``Books.train.csv``,
  ``Books.valid.csv``, ``Books.test.csv`` together (their ``history`` column is ignored);
  ``--source`` picks one explicitly;
* item metadata, ``meta_Books.jsonl`` when present (title, main_category, categories,
  description, store are kept);

and writes ``dataset/amazon-books/amazon-books.inter`` and ``.item`` the way HLLM prepares
these data (and so the Hydra paper): ``item_id`` is ``parent_asin``, timestamps are turned from
milliseconds into seconds (float, millisecond digits kept), rows repeating a (user, item,
timestamp) are dropped (the first one read is kept), then users and items with fewer than 5
interactions are removed over and over until none is left (5-core). ``.item`` lists exactly the
items that survive. Dataset names: ``amazon-books``, ``amazon-movies-tv``, ``amazon-video-games``,
``amazon-toys-games``; ``properties/dataset/<name>.yaml`` holds their RecBole settings.

Output format::

    .inter  user_id:token  item_id:token  rating:float  timestamp:float
    .item   item_id:token  title:token  main_category:token  categories:token_seq
            description:token  store:token

RecBole 1.2.1 knows four field types (``FeatureType``: token, float, token_seq, float_seq) and no
text type. Free text (title, description, store, main_category) is therefore a ``token``: RecBole
loads the whole string as one value, nothing is split or lost, and a text model can read the
column back verbatim (RecBole's own Amazon atomic files type ``title`` the same way). A
``token_seq`` would be split on ``seq_separator`` (a space) into words, and RecBole would pad
every description to the longest one. ``categories`` is a list, so it is a ``token_seq``: one
token per category, spaces inside a category name replaced by ``_``
(``Books Literature_&_Fiction``). In all text, runs of white space and control characters
(tabs, newlines, ...) become one space; a value holding a double quote is written CSV-quoted
(``"12"" vinyl"``), which RecBole's pandas reader reads back as ``12" vinyl``. Description
paragraphs are joined with a space. Items without metadata get empty text fields.

Large files: input is read in blocks of complete lines (``--block-mb``), each parsed by Arrow
(CSV, or JSON reading only the needed fields). Ids become int32 codes as they come (Arrow
dictionaries, merged now and then), so memory holds the unique id strings once plus 20 bytes a
row, never a Python object per row or per JSON line. A block that Arrow rejects or that holds a
bad row is halved until the bad lines are found and parsed one by one, which is what reports
``file:line``; ``--on-error skip`` drops such lines (counted in the summary), ``--on-error fail``
(the default) stops at the first with exit status 2, before anything is written.

The files are written under temporary names (``.amazon-books.inter.partial``) in the dataset's
folder and renamed into place only when complete, the old ``.inter`` removed first, so an
interrupted run never leaves a dataset that RecBole would load half-written. The output depends
only on the input rows (sorted by user id, time, item id), so a re-run writes the same bytes.
"""

import argparse
import csv
import gzip
import json
import os
import re
import signal
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from recbole_hydra.data.catalogue import AMAZON2023_CATEGORIES as CATEGORIES
from recbole_hydra.data.catalogue import AMAZON2023_DATASETS as DATASETS
from recbole_hydra.data.catalogue import AMAZON2023_SITE as SITE

SOURCES = ("auto", "csv", "jsonl", "splits")
SPLITS = ("train", "valid", "test")

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_FIELDS = ("title", "main_category", "categories", "description", "store")
ITEM_HEADER = (
    "item_id:token\ttitle:token\tmain_category:token\tcategories:token_seq\t"
    "description:token\tstore:token\n"
)

USER, ITEM, RATING, TIME = "user_id", "parent_asin", "rating", "timestamp"
INTER_SCHEMA = pa.schema(
    [(USER, pa.string()), (ITEM, pa.string()), (RATING, pa.float64()), (TIME, pa.float64())]
)
META_SCHEMA = pa.schema(
    [
        (ITEM, pa.string()),
        ("title", pa.string()),
        ("main_category", pa.string()),
        ("store", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("description", pa.list_(pa.string())),
    ]
)
# An id must be non-empty and free of white space, control characters and double quotes (it is
# written unquoted into a tab-separated file). The same class in Arrow's RE2 and in Python.
BAD_ID = r'^$|[\x00-\x20\x7f"]'
_BAD_ID = re.compile(BAD_ID)
_SPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")
MAX_TIME_MS = 2.0**53  # beyond this a float no longer holds every millisecond
MAX_RATING = 3.0e38  # ratings are stored as float32
SMALL_BLOCK_LINES = 256  # below this a rejected block is parsed line by line
WRITE_ROWS = 1 << 20


class ConvertError(Exception):
    """Input or setup the converter cannot use; the CLI prints it in one line, exit status 2."""


def resolve_category(value: str) -> str:
    """``Books``, ``books`` or ``amazon-books`` -> ``Books``."""
    if value in DATASETS:
        return DATASETS[value]
    for category in CATEGORIES:
        if category.lower() == value.lower():
            return category
    raise ConvertError(
        f"unknown category {value!r}: use one of {', '.join(CATEGORIES)} (or {', '.join(DATASETS)})"
    )


# --- input files ------------------------------------------------------------------------------


class Inputs(NamedTuple):
    kind: str  # "csv" or "jsonl"
    interactions: list  # paths, read in this order
    meta: Optional[Path]


def find_inputs(raw, category: str, source: str = "auto") -> Inputs:
    raw = Path(raw)
    if not raw.is_dir():
        raise ConvertError(f"--raw {raw} is not a folder")

    def pick(stem):
        for suffix in ("", ".gz"):
            if (raw / f"{stem}{suffix}").is_file():
                return raw / f"{stem}{suffix}"
        return None

    found = {
        "csv": [pick(f"{category}.csv")],
        "jsonl": [pick(f"{category}.jsonl")],
        "splits": [pick(f"{category}.{split}.csv") for split in SPLITS],
    }
    names = {
        "csv": f"{category}.csv[.gz]",
        "jsonl": f"{category}.jsonl[.gz]",
        "splits": " + ".join(f"{category}.{split}.csv[.gz]" for split in SPLITS),
    }
    order = ("csv", "jsonl", "splits") if source == "auto" else (source,)
    for choice in order:
        if all(found[choice]):
            kind = "jsonl" if choice == "jsonl" else "csv"
            return Inputs(kind, found[choice], pick(f"meta_{category}.jsonl"))
    wanted = " or ".join(names[choice] for choice in order)
    raise ConvertError(
        f"no {wanted} in {raw}: download {category}.jsonl.gz (reviews) or the "
        f"rating-only {category}.csv.gz, and meta_{category}.jsonl.gz, from {SITE}"
    )


def _open(path: Path):
    """(binary stream, raw file for progress); gzip by file name."""
    raw = open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def _line_blocks(path: Path, block_bytes: int, bar=None) -> Iterator[Tuple[int, bytes]]:
    """(number of the block's first line, block of complete lines ending in a newline)."""
    stream, raw = _open(path)
    try:
        line_no, rest = 1, b""
        while True:
            try:
                data = stream.read(block_bytes)
            except (OSError, EOFError, zlib.error) as err:
                raise ConvertError(f"{path}: cannot read (damaged or truncated gzip?): {err}")
            if bar is not None:
                bar.update(raw.tell() - bar.n)
            if not data:
                if rest:
                    yield line_no, rest + b"\n"
                return
            data = rest + data if rest else data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            block, rest = data[: cut + 1], data[cut + 1 :]
            yield line_no, block
            line_no += block.count(b"\n")
    finally:
        stream.close()
        raw.close()


def _stderr_line(message: str) -> None:
    """One line on stderr, on a line of its own even when a progress bar was drawn there."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _progress(path: Path, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=path.name,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )


# --- malformed input --------------------------------------------------------------------------


class Problems:
    """Counts malformed lines by reason; with ``fail`` the first one is an error."""

    SHOWN = 5

    def __init__(self, on_error: str, say=None):
        if on_error not in ("fail", "skip"):
            raise ConvertError(f"--on-error must be fail or skip, got {on_error!r}")
        self.on_error, self.say = on_error, say
        self.counts = Counter()

    def __call__(self, path, line_no, reason, detail=""):
        self.counts[reason] += 1
        where = f"{path}:{line_no}: {reason}" + (f" ({detail})" if detail else "")
        if self.on_error == "fail":
            raise ConvertError(f"{where}; --on-error skip drops such lines")
        if self.say is not None and sum(self.counts.values()) <= self.SHOWN:
            self.say(f"skipping {where}")

    @property
    def total(self):
        return sum(self.counts.values())

    def describe(self):
        return ", ".join(f"{n:,} {reason}" for reason, n in self.counts.most_common())


def _number(value):
    """float(value), or the reason it is not a usable number."""
    if value is None:
        return None, "missing"
    if isinstance(value, bool):
        return None, "non-numeric"
    if isinstance(value, (int, float)):
        return float(value), None
    if isinstance(value, str):
        if not value.strip():
            return None, "missing"
        try:
            return float(value.strip()), None
        except ValueError:
            return None, "non-numeric"
    return None, "non-numeric"


def _check_row(user, item, rating, timestamp):
    """The problem with one row (reason, detail), or (None, (rating, ms))."""
    for field, value in ((USER, user), (ITEM, item)):
        if value is None:
            return f"missing {field}", ""
        if not isinstance(value, str) or _BAD_ID.search(value):
            return f"bad {field}", f"{value!r}"[:60]
    rating_value, why = _number(rating)
    if why:
        return f"{why} {RATING}", "" if rating is None else f"{rating!r}"[:60]
    if not abs(rating_value) < MAX_RATING:
        return f"out-of-range {RATING}", f"{rating!r}"[:60]
    ms, why = _number(timestamp)
    if why:
        return f"{why} {TIME}", "" if timestamp is None else f"{timestamp!r}"[:60]
    if not abs(ms) < MAX_TIME_MS:
        return f"out-of-range {TIME}", f"{timestamp!r}"[:60]
    return None, (rating_value, ms)


# --- parsing interactions ---------------------------------------------------------------------


class Ids(NamedTuple):
    codes: np.ndarray  # int32 positions in ``dictionary``
    dictionary: pa.Array  # distinct strings


def encode(column) -> Ids:
    """Dictionary-encode an Arrow string array or chunked array (one dictionary for all)."""
    encoded = pc.dictionary_encode(column)
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    if not chunks:
        return Ids(np.zeros(0, np.int32), pa.array([], pa.string()))
    codes = [c.indices.to_numpy(zero_copy_only=False) for c in chunks]
    codes = codes[0] if len(codes) == 1 else np.concatenate(codes)
    return Ids(codes.astype(np.int32, copy=False), chunks[0].dictionary)


class Rows(NamedTuple):
    users: Ids
    items: Ids
    rating: np.ndarray  # float32
    ms: np.ndarray  # int64, milliseconds


def _numbers(table, name):
    column = table.column(name)
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy()
    return column.to_numpy()


def _checked(table: pa.Table, n_lines: int) -> Optional[Rows]:
    """The block's rows when every line is a clean row, else None (the block is split)."""
    if table.num_rows != n_lines:
        return None
    if any(table.column(c).null_count for c in (USER, ITEM, RATING, TIME)):
        return None
    rating, ms = _numbers(table, RATING), _numbers(table, TIME)
    if not ((np.abs(rating) < MAX_RATING).all() and (np.abs(ms) < MAX_TIME_MS).all()):
        return None
    users, items = encode(table.column(USER)), encode(table.column(ITEM))
    for ids in (users, items):  # checked once per distinct id
        if pc.any(pc.match_substring_regex(ids.dictionary, BAD_ID)).as_py():
            return None
    return Rows(users, items, rating.astype(np.float32), np.rint(ms).astype(np.int64))


def _rows_from_lists(users, items, ratings, stamps) -> Rows:
    return Rows(
        encode(pa.array(users, pa.string())),
        encode(pa.array(items, pa.string())),
        np.array(ratings, np.float32),
        np.rint(np.array(stamps, np.float64)).astype(np.int64),
    )


class _CsvFormat:
    def __init__(self, path: Path, header: bytes):
        try:
            names = next(csv.reader([header.decode("utf-8-sig").rstrip("\r\n")]))
        except (UnicodeDecodeError, csv.Error, StopIteration) as err:
            raise ConvertError(f"{path}:1: unreadable CSV header ({err})")
        for need in (USER, ITEM, RATING, TIME):
            if need not in names:
                raise ConvertError(
                    f"{path}:1: no {need!r} column in the header (columns: {', '.join(names)}); "
                    f"expected {USER},{ITEM},{RATING},{TIME}"
                )
        self.path, self.names = path, names
        self.index = [names.index(c) for c in (USER, ITEM, RATING, TIME)]
        self.read_options = pacsv.ReadOptions(column_names=names, use_threads=True)
        self.convert_options = pacsv.ConvertOptions(
            include_columns=[USER, ITEM, RATING, TIME],
            column_types={f.name: f.type for f in INTER_SCHEMA},
        )

    def fast(self, block: bytes, n_lines: int) -> Optional[Rows]:
        try:
            table = pacsv.read_csv(
                pa.BufferReader(block),
                read_options=self.read_options,
                convert_options=self.convert_options,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        return _checked(table, n_lines)

    def slow(self, block: bytes, first_line: int, problems: Problems) -> Rows:
        users, items, ratings, stamps = [], [], [], []
        for offset, raw in enumerate(block.split(b"\n")[:-1]):
            line_no = first_line + offset
            if not raw.strip():
                continue
            try:
                fields = next(csv.reader([raw.decode("utf-8").rstrip("\r")]))
            except UnicodeDecodeError:
                problems(self.path, line_no, "not UTF-8")
                continue
            except csv.Error as err:
                problems(self.path, line_no, "bad CSV", str(err))
                continue
            if len(fields) != len(self.names):
                problems(
                    self.path,
                    line_no,
                    "wrong number of fields",
                    f"{len(fields)} instead of {len(self.names)}",
                )
                continue
            reason, value = _check_row(*(fields[i] for i in self.index))
            if reason:
                problems(self.path, line_no, reason, value)
                continue
            users.append(fields[self.index[0]])
            items.append(fields[self.index[1]])
            ratings.append(value[0])
            stamps.append(value[1])
        return _rows_from_lists(users, items, ratings, stamps)


class _JsonFormat:
    def __init__(self, path: Path, schema=INTER_SCHEMA):
        self.path = path
        self.parse_options = pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"
        )

    def table(self, block: bytes) -> Optional[pa.Table]:
        # A line longer than block_size is an error; the block is then halved down to the
        # line-by-line parser, which takes any length.
        read_options = pajson.ReadOptions(use_threads=True, block_size=4 << 20)
        try:
            return pajson.read_json(
                pa.BufferReader(block), read_options=read_options, parse_options=self.parse_options
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None

    def fast(self, block: bytes, n_lines: int) -> Optional[Rows]:
        table = self.table(block)
        return None if table is None else _checked(table, n_lines)

    def objects(self, block: bytes, first_line: int, problems: Problems):
        for offset, raw in enumerate(block.split(b"\n")[:-1]):
            if not raw.strip():
                continue
            line_no = first_line + offset
            try:
                obj = json.loads(raw)
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                problems(self.path, line_no, "bad JSON", str(err)[:80])
                continue
            if not isinstance(obj, dict):
                problems(self.path, line_no, "not a JSON object")
                continue
            yield line_no, obj

    def slow(self, block: bytes, first_line: int, problems: Problems) -> Rows:
        users, items, ratings, stamps = [], [], [], []
        for line_no, obj in self.objects(block, first_line, problems):
            reason, value = _check_row(obj.get(USER), obj.get(ITEM), obj.get(RATING), obj.get(TIME))
            if reason:
                problems(self.path, line_no, reason, value)
                continue
            users.append(obj[USER])
            items.append(obj[ITEM])
            ratings.append(value[0])
            stamps.append(value[1])
        return _rows_from_lists(users, items, ratings, stamps)


def _parse(fmt, block: bytes, first_line: int, problems: Problems) -> List[Rows]:
    """Arrow on the whole block; a rejected block is halved until the bad lines are found."""
    n_lines = block.count(b"\n")
    rows = fmt.fast(block, n_lines)
    if rows is not None:
        return [rows]
    if n_lines <= SMALL_BLOCK_LINES:
        return [fmt.slow(block, first_line, problems)]
    middle = block.find(b"\n", len(block) // 2)
    if middle < 0 or middle == len(block) - 1:
        middle = block.rfind(b"\n", 0, len(block) - 1)
    head, tail = block[: middle + 1], block[middle + 1 :]
    return _parse(fmt, head, first_line, problems) + _parse(
        fmt, tail, first_line + head.count(b"\n"), problems
    )


def read_interactions(
    path: Path, kind: str, problems: Problems, block_bytes: int, progress: bool = False
) -> Iterator[Rows]:
    bar = _progress(path, progress)
    try:
        fmt, first = None, True
        for line_no, block in _line_blocks(path, block_bytes, bar):
            if first and kind == "csv":
                end = block.index(b"\n")
                fmt = _CsvFormat(path, block[: end + 1])
                block, line_no = block[end + 1 :], line_no + 1
            elif first:
                fmt = _JsonFormat(path)
            first = False
            if block:
                yield from _parse(fmt, block, line_no, problems)
        if first and kind == "csv":
            raise ConvertError(
                f"{path}: empty file (expected a header {USER},{ITEM},{RATING},{TIME})"
            )
    finally:
        bar.close()


# --- ids --------------------------------------------------------------------------------------


class IdCoder:
    """String ids -> dense int32 codes in order of first appearance, strings kept in Arrow.

    Each block is dictionary-encoded on its own; block dictionaries are merged into the known
    ids once they add up to as many strings as are known, so the work stays linear in the rows.
    """

    MIN_MERGE = 1 << 20  # strings waiting before a merge, at least

    def __init__(self):
        self.known = pa.array([], pa.large_string())
        self.blocks = []  # per block: int32 codes (local until merged)
        self.pending = []  # (block index, its dictionary)
        self.pending_size = 0

    def add(self, ids: Ids):
        self.blocks.append(ids.codes)
        dictionary = ids.dictionary.cast(pa.large_string())
        self.pending.append((len(self.blocks) - 1, dictionary))
        self.pending_size += len(dictionary)
        if self.pending_size >= max(len(self.known), self.MIN_MERGE):
            self._merge()

    def _merge(self):
        if not self.pending:
            return
        n_known = len(self.known)
        combined = pc.dictionary_encode(
            pa.concat_arrays([self.known] + [d for _, d in self.pending])
        )
        codes = combined.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        if not np.array_equal(codes[:n_known], np.arange(n_known, dtype=np.int32)):
            pending = {index for index, _ in self.pending}  # not expected: Arrow keeps order
            for index, block in enumerate(self.blocks):
                if index not in pending:
                    self.blocks[index] = codes[:n_known][block]
        self.known = combined.dictionary
        offset = n_known
        for index, dictionary in self.pending:
            self.blocks[index] = codes[offset : offset + len(dictionary)][self.blocks[index]]
            offset += len(dictionary)
        self.pending, self.pending_size = [], 0

    def finish(self) -> Tuple[np.ndarray, pa.Array]:
        self._merge()
        codes = np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.int32)
        self.blocks = []
        return codes, self.known


# --- filtering --------------------------------------------------------------------------------


def drop_duplicates(users, items, ms, n_items) -> np.ndarray:
    """Mask keeping the first row read of each (user, item, timestamp)."""
    keep = np.ones(len(users), bool)
    if len(users) == 0:
        return keep
    key = users.astype(np.int64) * max(n_items, 1) + items
    # Only rows whose (user, item) repeats can be duplicates: a hash pass finds them, a sort of
    # those few then compares timestamps.
    candidates = np.flatnonzero(pd.Series(key).duplicated(keep=False).to_numpy())
    key, ms = key[candidates], ms[candidates]
    order = np.lexsort((ms, key))  # stable: equal rows stay in the order they were read
    key, ms = key[order], ms[order]
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (key[1:] == key[:-1]) & (ms[1:] == ms[:-1])
    keep[candidates[order[repeat]]] = False
    return keep


def kcore(users, items, n_users, n_items, k, say=None) -> Tuple[np.ndarray, int]:
    """Indices of the rows left once every user and item has at least ``k`` of them (removing
    rows until nothing changes), and the number of rounds that removed rows."""
    rows = np.arange(len(users))
    u, i = users, items
    rounds = 0
    while True:
        keep = (np.bincount(u, minlength=n_users)[u] >= k) & (
            np.bincount(i, minlength=n_items)[i] >= k
        )
        if keep.all():
            return rows, rounds
        rounds += 1
        rows, u, i = rows[keep], u[keep], i[keep]
        if say is not None:
            say(f"{k}-core round {rounds}: {len(rows):,} rows left")


def _ranks(codes: np.ndarray, names: pa.Array, n: int):
    """Rank of each present code among the present ids sorted as strings, and those ids."""
    present = np.unique(codes)
    strings = names.take(pa.array(present))
    order = pc.sort_indices(strings).to_numpy()
    rank = np.full(n, -1, np.int64)
    rank[present[order]] = np.arange(len(present))
    return rank, strings.take(pa.array(order))


# --- metadata ---------------------------------------------------------------------------------


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return _SPACE.sub(" ", " ".join(_text(v) for v in value)).strip()
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, dict) else str(value)
    return _SPACE.sub(" ", value).strip()


def _categories(value) -> str:
    if value is None:
        return ""
    values = value if isinstance(value, list) else [value]
    return " ".join(t.replace(" ", "_") for t in map(_text, values) if t)


def item_fields(obj: dict) -> list:
    return [
        _text(obj.get("title")),
        _text(obj.get("main_category")),
        _categories(obj.get("categories")),
        _text(obj.get("description")),
        _text(obj.get("store")),
    ]


def read_meta(
    path: Path, wanted: pa.Array, problems: Problems, block_bytes: int, progress: bool = False
) -> Iterator[Tuple[int, list]]:
    """(position in ``wanted``, item fields) for each metadata line of a wanted item."""
    fmt = _JsonFormat(path, META_SCHEMA)
    bar = _progress(path, progress)
    try:
        for line_no, block in _line_blocks(path, block_bytes, bar):
            yield from _meta_block(fmt, block, line_no, wanted, problems)
    finally:
        bar.close()


def _meta_block(fmt, block, first_line, wanted, problems):
    n_lines = block.count(b"\n")
    table = fmt.table(block)
    if table is not None and table.num_rows == n_lines:
        ids = table.column(ITEM)
        if not ids.null_count and not pc.any(pc.match_substring_regex(ids, BAD_ID)).as_py():
            position = pc.index_in(ids, value_set=wanted)
            hit = pc.is_valid(position)
            for pos, obj in zip(position.filter(hit).to_pylist(), table.filter(hit).to_pylist()):
                yield pos, item_fields(obj)
            return
    if n_lines > SMALL_BLOCK_LINES:  # halve, as for interactions
        middle = block.find(b"\n", len(block) // 2)
        if middle < 0 or middle == len(block) - 1:
            middle = block.rfind(b"\n", 0, len(block) - 1)
        head, tail = block[: middle + 1], block[middle + 1 :]
        yield from _meta_block(fmt, head, first_line, wanted, problems)
        yield from _meta_block(fmt, tail, first_line + head.count(b"\n"), wanted, problems)
        return
    objects = list(fmt.objects(block, first_line, problems))
    ids = []
    for line_no, obj in objects:
        item = obj.get(ITEM)
        if item is None:
            problems(fmt.path, line_no, f"missing {ITEM}")
        elif not isinstance(item, str) or _BAD_ID.search(item):
            problems(fmt.path, line_no, f"bad {ITEM}", f"{item!r}"[:60])
        else:
            ids.append((item, obj))
    if ids:
        position = pc.index_in(
            pa.array([i for i, _ in ids], pa.string()), value_set=wanted
        ).to_pylist()
        for pos, (_, obj) in zip(position, ids):
            if pos is not None:
                yield pos, item_fields(obj)


# --- writing ----------------------------------------------------------------------------------


def _write_inter(path, user_names, item_names, users, items, rating, ms, order):
    """Rows ``order`` of (``users``, ``items``: positions in the name arrays) as ``.inter``."""
    schema = pa.schema(
        [
            ("u", pa.large_string()),
            ("i", pa.large_string()),
            ("r", pa.float32()),
            ("t", pa.float64()),
        ]
    )
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as f:
        f.write(INTER_HEADER.encode())
        writer = pacsv.CSVWriter(f, schema, write_options=options)
        for start in range(0, len(order), WRITE_ROWS):
            rows = order[start : start + WRITE_ROWS]
            writer.write_batch(
                pa.record_batch(
                    [
                        user_names.take(pa.array(users[rows])),
                        item_names.take(pa.array(items[rows])),
                        pa.array(rating[rows]),
                        pa.array(ms[rows] / 1000.0),
                    ],
                    schema=schema,
                )
            )
        writer.close()


def _write_item(path, item_names, meta_rows):
    """``meta_rows``: (rank, fields) in metadata order; the first per item wins, items without
    metadata follow in id order."""
    seen = np.zeros(len(item_names), bool)
    with_meta = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(ITEM_HEADER)
        writer = csv.writer(
            f, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
        )
        for rank, fields in meta_rows:
            if not seen[rank]:
                seen[rank] = True
                with_meta += 1
                writer.writerow([item_names[rank].as_py()] + fields)
        missing = np.flatnonzero(~seen)
        empty = [""] * len(ITEM_FIELDS)
        for start in range(0, len(missing), WRITE_ROWS):
            for item in item_names.take(pa.array(missing[start : start + WRITE_ROWS])).to_pylist():
                writer.writerow([item] + empty)
    return with_meta


def _publish(pairs):
    """Rename temporary files into place, the ``.inter`` last; the old ``.inter`` goes first so
    that no moment has a new ``.item`` beside an old ``.inter``."""
    final_inter = pairs[-1][1]
    if final_inter.exists():
        os.unlink(final_inter)
    for tmp, final in pairs:
        os.replace(tmp, final)


# --- the conversion ---------------------------------------------------------------------------


def convert(
    category,
    raw,
    out,
    *,
    k=5,
    on_error="fail",
    source="auto",
    progress=False,
    block_bytes=32 << 20,
    say=None,
) -> dict:
    """Convert one category; returns the summary numbers. ``say`` gets progress lines."""
    t0 = time.perf_counter()
    say = say or (lambda message: None)
    category = resolve_category(category)
    name = CATEGORIES[category]
    if source not in SOURCES:
        raise ConvertError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    inputs = find_inputs(raw, category, source)
    problems, meta_problems = Problems(on_error, say), Problems(on_error, say)

    users, items = IdCoder(), IdCoder()
    ratings, stamps = [], []
    for path in inputs.interactions:
        say(f"reading {path}")
        for rows in read_interactions(path, inputs.kind, problems, block_bytes, progress):
            users.add(rows.users)
            items.add(rows.items)
            ratings.append(rows.rating)
            stamps.append(rows.ms)
    u, user_names = users.finish()
    i, item_names = items.finish()
    rating = np.concatenate(ratings) if ratings else np.zeros(0, np.float32)
    ms = np.concatenate(stamps) if stamps else np.zeros(0, np.int64)
    del ratings, stamps, users, items
    pool = pa.default_memory_pool()
    if hasattr(pool, "release_unused"):  # hand Arrow's parsing buffers back to the system
        pool.release_unused()
    n_valid = len(u)
    say(f"{n_valid:,} rows, {len(user_names):,} users, {len(item_names):,} items read")

    keep = drop_duplicates(u, i, ms, len(item_names))
    n_duplicates = int(len(keep) - keep.sum())
    if n_duplicates:
        u, i, rating, ms = u[keep], i[keep], rating[keep], ms[keep]
    del keep
    rows, rounds = kcore(u, i, len(user_names), len(item_names), k, say)
    n_kcore = len(u) - len(rows)
    u, i, rating, ms = u[rows], i[rows], rating[rows], ms[rows]
    del rows
    if len(u) == 0:
        raise ConvertError(
            f"no interaction survives the {k}-core filter ({n_valid:,} rows read "
            f"from {', '.join(str(p) for p in inputs.interactions)})"
        )

    user_rank, user_sorted = _ranks(u, user_names, len(user_names))
    item_rank, item_sorted = _ranks(i, item_names, len(item_names))
    del user_names, item_names
    u, i = user_rank[u], item_rank[i]
    del user_rank, item_rank
    order = np.lexsort((i, ms, u))  # by user id, then time, then item id

    folder = Path(out) / name
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [
        (folder / f".{name}.item.partial", folder / f"{name}.item"),
        (folder / f".{name}.inter.partial", folder / f"{name}.inter"),
    ]
    try:
        say(f"writing {folder}")
        _write_inter(pairs[1][0], user_sorted, item_sorted, u, i, rating, ms, order)
        if inputs.meta is not None:
            say(f"reading {inputs.meta}")
            meta_rows = read_meta(inputs.meta, item_sorted, meta_problems, block_bytes, progress)
        else:
            meta_rows = iter(())
        with_meta = _write_item(pairs[0][0], item_sorted, meta_rows)
        _publish(pairs)
    finally:
        for tmp, _ in pairs:
            if tmp.exists():
                tmp.unlink()
        if created and not any(folder.iterdir()):
            folder.rmdir()

    return {
        "dataset": name,
        "folder": str(folder),
        "inputs": [str(p) for p in inputs.interactions],
        "meta": str(inputs.meta) if inputs.meta else None,
        "rows_read": n_valid + problems.total,
        "malformed": dict(problems.counts),
        "duplicates": n_duplicates,
        "kcore_dropped": n_kcore,
        "kcore_rounds": rounds,
        "interactions": len(u),
        "users": len(user_sorted),
        "items": len(item_sorted),
        "items_with_meta": with_meta,
        "meta_malformed": dict(meta_problems.counts),
        "seconds": time.perf_counter() - t0,
    }


def summary(stats: dict, k: int = 5) -> str:
    malformed = sum(stats["malformed"].values())
    lines = [
        f"{stats['dataset']}: {stats['rows_read']:,} rows read from "
        f"{', '.join(Path(p).name for p in stats['inputs'])}",
        f"  dropped {malformed:,} malformed"
        + (
            f" ({', '.join(f'{n:,} {r}' for r, n in stats['malformed'].items())})"
            if malformed
            else ""
        )
        + f", {stats['duplicates']:,} duplicates (same user, item, timestamp), "
        f"{stats['kcore_dropped']:,} by the {k}-core filter ({stats['kcore_rounds']} "
        f"round{'' if stats['kcore_rounds'] == 1 else 's'})",
        f"  kept {stats['interactions']:,} interactions of {stats['users']:,} users on "
        f"{stats['items']:,} items",
    ]
    if stats["meta"]:
        meta_bad = sum(stats["meta_malformed"].values())
        lines.append(
            f"  metadata from {Path(stats['meta']).name} for {stats['items_with_meta']:,} of "
            f"{stats['items']:,} items"
            + (
                f" ({meta_bad:,} malformed lines dropped: "
                + ", ".join(f"{n:,} {r}" for r, n in stats["meta_malformed"].items())
                + ")"
                if meta_bad
                else ""
            )
        )
    else:
        lines.append("  no metadata file: .item has the item ids and empty text fields")
    lines.append(
        f"  wrote {stats['folder']}/{stats['dataset']}.inter and .item in {stats['seconds']:.1f} s"
    )
    return "\n".join(lines)


def _interrupt_on_sigterm():
    """Make a plain ``kill`` go through the same clean-up as Ctrl-C (temporary files removed);
    returns the previous handler (None where signals cannot be set, off the main thread)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_hydra.data.amazon2023",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--category",
        required=True,
        help=f"{', '.join(CATEGORIES)} (or the dataset name, e.g. amazon-books)",
    )
    parser.add_argument("--raw", required=True, help="folder holding the downloaded files")
    parser.add_argument(
        "--out",
        default="dataset",
        help="RecBole's data_path; files go to OUT/<dataset>/ (default: dataset)",
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="malformed lines: fail (default; exit 2 naming file:line, nothing "
        "written) or skip (count them and go on)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="interaction file: auto (CSV, else JSONL, else the split files)",
    )
    parser.add_argument("--k", type=int, default=5, help="k-core threshold (default 5)")
    parser.add_argument(
        "--block-mb",
        type=int,
        default=32,
        help="bytes of input parsed at a time, in MiB (default 32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    def say(message):
        if not args.quiet:
            from tqdm import tqdm

            tqdm.write(f"amazon2023: {message}", file=sys.stderr)  # above any progress bar

    previous = _interrupt_on_sigterm()
    try:
        if args.k < 1 or args.block_mb < 1:
            raise ConvertError("--k and --block-mb must be >= 1")
        stats = convert(
            args.category,
            args.raw,
            args.out,
            k=args.k,
            on_error=args.on_error,
            source=args.source,
            progress=not args.quiet,
            block_bytes=args.block_mb << 20,
            say=say,
        )
    except ConvertError as err:
        _stderr_line(f"amazon2023: error: {err}")
        return 2
    except KeyboardInterrupt:
        _stderr_line("amazon2023: interrupted; no partial output was left behind")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary(stats, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
