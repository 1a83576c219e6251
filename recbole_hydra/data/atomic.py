"""RecBole's atomic files (``.inter``, ``.item``, ``.user``), checked before RecBole reads them.

RecBole reads an atomic file with pandas (``read_csv(sep=field_separator, ...)``) and takes its
header line as the columns, each ``name:type``. What it accepts without a word is wrong data: a
row with too few fields gets NaN in the missing ones, ``NA``, ``null`` or an empty cell becomes
NaN, a time column declared ``token`` orders interactions by token id instead of time. What it
refuses, it refuses with a message that does not say what to write instead. ``check_file`` reads
a file once, line by line (about a second for a million rows), and raises ``UsageError`` with one
line naming the file, the column or the lines, and what to write.
"""

from recbole.utils import FeatureType

from recbole_hydra.errors import UsageError

#: RecBole's field types, as a header writes them after the column name
TYPES = tuple(t.value for t in FeatureType)

#: pandas' default missing-value markers (``read_csv``'s ``na_values``): such a cell is NaN
NA_VALUES = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)

SHOWN_LINES = 3  # line numbers quoted in a message


def read_header(path, sep="\t", encoding="utf-8", types=None, example=()):
    """``{column: type}`` of an atomic file's header line. ``UsageError`` when the file is empty,
    its header is not ``name:type`` columns separated by ``sep``, or a type is not RecBole's.
    Messages suggest the types ``types`` gives (column -> type; else token), and ``example``'s
    columns as the header of an empty file."""
    types = types or {}
    with open(path, encoding=encoding) as f:
        first = f.readline()
        rest = f.readline()
    example = _example_header(types, example, sep)
    if not first.strip():
        if not rest:
            raise UsageError(f"{path} is empty: it needs a header line ({example}) and rows")
        raise UsageError(f"{path} starts with a blank line: its first line must be the header")
    fields = first.rstrip("\n").split(sep)
    if len(fields) == 1:
        for other in (",", ";", "\t", " "):
            if other != sep and other in fields[0]:
                raise UsageError(
                    f"the header of {path} has one column for field_separator {sep!r}, but "
                    f"holds {other!r}: separate its fields with {sep!r}, or set "
                    f'--field_separator="{other}"'
                )
    names = [field.partition(":")[0] for field in fields]
    if any(":" not in field for field in fields):
        raise UsageError(
            f"the header of {path} ({' '.join(fields)}) has columns without a type: RecBole's "
            f"atomic-file headers are name:type ({', '.join(TYPES)}), e.g. "
            f"{_example_header(types, names, sep)}"
        )
    header = {}
    for field in fields:
        name, _, ftype = field.partition(":")
        if ftype not in TYPES:
            raise UsageError(
                f"column {name} of {path} has type {ftype!r}, which RecBole does not know: "
                f"write {name}:{types.get(name, 'token')} (the types: {', '.join(TYPES)})"
            )
        header[name] = ftype
    return header


def _example_header(types, names, sep):
    columns = " ".join(f"{name}:{types.get(name, 'token')}" for name in names)
    return f"{columns}, separated by {sep!r}"


def check_file(
    path, sep="\t", encoding="utf-8", types=None, example=(), ids=(), time=None, required=()
):
    """The checked header of ``path`` (``read_header``), after one pass over its rows.

    ``ids``: columns that must be ``token`` where the file has them; ``time``: a column that must
    be ``float`` and hold numbers; ``required``: columns whose cells must not be empty (or a
    missing-value marker such as ``NA``). Every row must have the header's number of fields;
    blank lines are skipped, as pandas skips them. A file with a header and no row is refused."""
    header = read_header(path, sep, encoding, types, example)
    for name in ids:
        if name in header and header[name] != "token":
            raise UsageError(
                f"{path} declares {name}:{header[name]}, but id columns must be token (RecBole "
                f"maps their values to ids): write {name}:token in its header"
            )
    if time in header and header[time] != "float":
        raise UsageError(
            f"{path} declares {time}:{header[time]}, but the time field must be float (the split "
            f"orders interactions by it; a {header[time]} orders them by token id): write "
            f"{time}:float in its header"
        )
    columns = list(header)
    n_fields = len(columns)
    checked = [(columns.index(c), c) for c in required if c in header and c != time]
    time_index = columns.index(time) if time in header else None
    problems = {}  # what -> [count, first line numbers]

    def note(what, lineno):
        entry = problems.setdefault(what, [0, []])
        entry[0] += 1
        if len(entry[1]) < SHOWN_LINES:
            entry[1].append(lineno)

    rows = 0
    with open(path, encoding=encoding) as f:
        f.readline()
        for lineno, line in enumerate(f, 2):
            values = line.rstrip("\n").split(sep)
            if len(values) != n_fields:
                if len(values) == 1 and not values[0].strip():
                    continue  # a blank line
                note(("fields", len(values)), lineno)
                continue
            rows += 1
            for index, column in checked:
                if values[index] in NA_VALUES:
                    note(("empty", column), lineno)
            if time_index is not None:
                value = values[time_index]
                if value in NA_VALUES:
                    note(("empty", time), lineno)
                    continue
                try:
                    number = float(value)
                except ValueError:
                    note(("number", time), lineno)
                    continue
                if number != number:  # NAN, -NAN, ...: pandas reads NaN too
                    note(("empty", time), lineno)
    _raise_first_problem(path, problems, n_fields)
    if rows == 0:
        raise UsageError(f"{path} has a header but no rows: add rows below its header line")
    return header


def _raise_first_problem(path, problems, n_fields):
    counts = sorted({n for kind, n in problems if kind == "fields"})
    if counts:
        count = sum(problems[("fields", n)][0] for n in counts)
        lines = sorted(line for n in counts for line in problems[("fields", n)][1])
        if len(counts) == 1:
            fields = "1 field" if counts[0] == 1 else f"{counts[0]} fields"
            what = f"{_rows(count)} {fields} instead of {n_fields}"
        else:
            what = f"{count} rows do not have {n_fields} fields"
        raise UsageError(f"{path}: {what} ({_lines(lines, count)}): fix or remove them")
    for (kind, column), (count, lines) in problems.items():
        what = (
            f"an empty or missing (NaN, NA, null, ...) {column}"
            if kind == "empty"
            else f"a {column} that is not a number"
        )
        raise UsageError(
            f"{path}: {_rows(count)} {what} ({_lines(lines, count)}): fix or remove them"
        )


def _rows(count):
    return "1 row has" if count == 1 else f"{count} rows have"


def _lines(lines, count):
    shown = ", ".join(map(str, lines[:SHOWN_LINES]))
    more = ", ..." if count > SHOWN_LINES else ""
    return f"line {shown}" if count == 1 else f"lines {shown}{more}"
