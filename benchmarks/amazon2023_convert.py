"""Throughput and peak memory of the Amazon Reviews 2023 converter on a synthetic ratings CSV.

    python benchmarks/amazon2023_convert.py                  # 5M rows, writes the results file
    python benchmarks/amazon2023_convert.py --rows 200000 --no-write

Generates ``Books.csv`` in the published rating-only layout (``user_id,parent_asin,rating,
timestamp``, 28-character user ids, 10-character ASINs, millisecond timestamps, rows in random
order, 1% repeated) with Zipf-like user activity and item popularity, then runs
``python -m recbole_hydra.data.amazon2023`` on it in a fresh process (through
``benchmarks/harness.py -m``) and reports rows/s, that process's CPU time and its peak RSS
(``harness.peak_rss_mb``: its own, not this script's). The peak RSS of a process that only imports
the module is reported beside it: importing ``recbole_hydra`` loads torch and RecBole.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import harness  # benchmarks/harness.py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(harness.__file__).resolve()
RESULTS = ROOT / "benchmarks" / "results" / "amazon2023_convert.md"
ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)


def ids(prefix: bytes, n: int, width: int, rng) -> np.ndarray:
    """``n`` distinct random ids ``prefix + base-32 characters``, ``width`` characters long."""
    body = ALPHABET[rng.integers(0, len(ALPHABET), size=(n, width - len(prefix)))]
    # make them distinct: the last 6 characters spell the index in base 32
    index = np.arange(n)
    for j in range(6):
        body[:, -1 - j] = ALPHABET[(index >> (5 * j)) & 31]
    raw = np.concatenate([np.tile(np.frombuffer(prefix, np.uint8), (n, 1)), body], axis=1)
    return raw.view(f"S{width}").ravel()


def zipf_choice(n_values: int, size: int, exponent: float, rng) -> np.ndarray:
    weights = np.arange(1, n_values + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    picks = np.searchsorted(cdf, rng.random(size) * cdf[-1])
    return rng.permutation(n_values)[picks]  # popular ids scattered over the id space


def generate(path: Path, rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows * 3 // 10, 10), max(rows // 10, 10)
    users = ids(b"A", n_users, 28, rng)
    items = ids(b"B0", n_items, 10, rng)
    unique = rows - rows // 100
    u = zipf_choice(n_users, unique, 0.8, rng)
    i = zipf_choice(n_items, unique, 0.9, rng)
    ms = rng.integers(1_000_000_000_000, 1_690_000_000_000, unique)
    again = rng.integers(0, unique, rows - unique)  # 1% exact repeats of (user, item, time)
    order = rng.permutation(rows)
    u, i, ms = (np.concatenate([a, a[again]])[order] for a in (u, i, ms))
    table = pa.table(
        {
            "user_id": pa.array(users[u].astype(str)),
            "parent_asin": pa.array(items[i].astype(str)),
            "rating": pa.array(
                np.array(["1.0", "2.0", "3.0", "4.0", "5.0"])[rng.integers(0, 5, rows)]
            ),
            "timestamp": pa.array(ms),
        }
    )
    with open(path, "wb") as f:
        f.write(b"user_id,parent_asin,rating,timestamp\n")
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return {"users": n_users, "items": n_items}


def run_child(argv) -> dict:
    """``python benchmarks/harness.py <argv>`` (``-m MODULE ...`` or ``--import MODULE``) in a fresh
    process: its wall time, CPU time, peak RSS and stdout."""
    done = harness.run_fresh([HARNESS, *argv], cwd=ROOT)
    if not done.ok:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{done.stderr}")
    return {
        "wall_s": done.wall_s,
        "cpu_s": done.result["cpu_s"],
        "max_rss_mb": done.result["peak_rss_mb"],
        "stdout": done.stdout,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument(
        "--workdir", default=None, help="where to put the CSV (default: a temp dir)"
    )
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="amazon2023-bench-"))
    raw, out = work / "raw", work / "out"
    raw.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        shape = generate(raw / "Books.csv", args.rows)
        generate_s = time.perf_counter() - t0
        size_mb = (raw / "Books.csv").stat().st_size / 2**20
        print(f"generated {args.rows:,} rows ({size_mb:.0f} MiB) in {generate_s:.1f} s", flush=True)

        import_rss_mb = run_child(["--import", "recbole_hydra.data.amazon2023"])["max_rss_mb"]
        command = [
            "-m",
            "recbole_hydra.data.amazon2023",
            "--category",
            "Books",
            "--raw",
            raw,
            "--out",
            out,
            "--quiet",
        ]
        load_before = os.getloadavg()[0]
        child = run_child(command)
        summary = child["stdout"].strip()
        inter_mb = (out / "amazon-books" / "amazon-books.inter").stat().st_size / 2**20
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    convert_s, cpu_s, peak_rss_mb = child["wall_s"], child["cpu_s"], child["max_rss_mb"]
    rate = args.rows / convert_s
    own_s = float(re.search(r"in ([0-9.]+) s$", summary).group(1))  # convert() alone
    own_rate = args.rows / own_s
    print(summary)
    print(
        f"child process {convert_s:.1f} s ({rate:,.0f} rows/s, {cpu_s:.1f} s CPU), conversion "
        f"alone {own_s:.1f} s ({own_rate:,.0f} rows/s); peak RSS {peak_rss_mb:,.0f} MiB (import "
        f"alone {import_rss_mb:,.0f} MiB); load average before {load_before:.1f}"
    )
    if args.no_write:
        return
    lines = harness.header(
        "Amazon Reviews 2023 converter: throughput and memory",
        harness.command(),
        harness.machine(pyarrow=pa.__version__, numpy=np.__version__),
    )
    lines += [
        (
            f"Input: a synthetic rating-only `Books.csv` ({size_mb:.0f} MiB, plain text) "
            f"in the published layout, {args.rows:,} rows in random order, "
            f"{shape['users']:,} possible users (28-character ids, activity ~ rank^-0.8) "
            f"and {shape['items']:,} possible items (10-character ASINs, "
            "popularity ~ rank^-0.9), millisecond timestamps, ratings 1.0-5.0, "
            "1% of the rows exact repeats of another's user, item and timestamp. "
            f"It was generated in {generate_s:.1f} s (not counted)."
        ),
        "",
        (
            "The converter ran in a fresh process (`python benchmarks/harness.py -m "
            "recbole_hydra.data.amazon2023 --category Books --raw RAW --out OUT --quiet`), "
            "whole run timed; its CPU time and peak RSS are that process's own "
            "(`harness.peak_rss_mb`, `VmHWM`). "
            '"Child process" is the whole command, Python start-up and imports included; '
            '"conversion alone" is the time the converter reports for itself '
            "(reading, filtering, writing); the "
            "import alone is a process that only imports the converter's module."
        ),
        "",
    ]
    lines += harness.table(
        [
            "rows",
            "child process",
            "rows/s",
            "its CPU time",
            "conversion alone",
            "rows/s",
            "peak RSS",
            "RSS of the import alone",
            ".inter written",
        ],
        [
            [
                f"{args.rows:,}",
                f"{convert_s:.1f} s",
                f"{rate:,.0f}",
                f"{cpu_s:.1f} s",
                f"{own_s:.1f} s",
                f"{own_rate:,.0f}",
                f"{peak_rss_mb:,.0f} MiB",
                f"{import_rss_mb:,.0f} MiB",
                f"{inter_mb:.0f} MiB",
            ]
        ],
        align="rrrrrrrrr",
    )
    lines += [
        "",
        (
            f"Load average (1 min) when the converter started: {load_before:.1f} on "
            f"{os.cpu_count()} cores."
        ),
        "",
        "Converter summary:",
        "",
        "```",
        summary,
        "```",
    ]
    harness.write_report(RESULTS, lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
