"""Shared fixtures: tiny RecBole datasets written by the tests, and a working directory per test
(RecBole writes log/, saved/ and log_tensorboard/ into the current directory)."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_hydra  # noqa: F401  (applies the RecBole compat shims)

# Test models are tiny: a second intra-op thread only adds synchronisation, and on a busy machine
# OpenMP's spinning threads make each small matmul ~10x slower.
torch.set_num_threads(1)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ML100K = (
    Path(__import__("recbole").__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
)


def write_inter(root, name, rows, with_time=True):
    """Write ``rows`` of (user, item, time) as RecBole atomic file ``root/name/name.inter``."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token" + ("\ttimestamp:float" if with_time else "")
    lines = [header] + ["\t".join(str(v) for v in (row if with_time else row[:2])) for row in rows]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return str(root)


def write_domains(root, name, rows, with_domain=True):
    """Write ``rows`` of (user, item, time, domain) as ``root/name/name.inter`` (without the domain
    column when ``with_domain`` is False: one single-domain dataset of a merge)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id:token\ttimestamp:float" + (
        "\tdomain:token" if with_domain else ""
    )
    lines = [header] + ["\t".join(map(str, r if with_domain else r[:3])) for r in rows]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return str(root)


def random_sequences(n_users, n_items, min_len, max_len, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t in range(int(rng.integers(min_len, max_len + 1))):
            rows.append((f"u{u}", f"i{int(rng.integers(n_items))}", 1000 * u + t))
    return rows


def ml100k_slice(root, n_users=60, name="ml-100k-slice"):
    """The first ``n_users`` users of the ml-100k that ships inside RecBole."""
    lines = ML100K.read_text().splitlines()
    keep = sorted({line.split("\t")[0] for line in lines[1:]}, key=int)[:n_users]
    keep = set(keep)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    body = [line for line in lines[1:] if line.split("\t")[0] in keep]
    (folder / f"{name}.inter").write_text("\n".join([lines[0]] + body) + "\n")
    return str(root)


# The smallest Hydra that trains end to end on ml100k_slice in seconds.
TINY_HYDRA = dict(
    hidden_size=16,
    n_layers=1,
    n_heads=2,
    d_state=8,
    chunk_size=8,
    num_negatives=16,
    MAX_ITEM_LIST_LENGTH=10,
)


def quiet_config(data_path, **overrides):
    config = {
        "data_path": data_path,
        "show_progress": False,
        "state": "ERROR",
        "epochs": 1,
        "seed": 7,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
    }
    config.update(overrides)
    return config


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def script(monkeypatch):
    """Import a ``benchmarks/`` script by name, as the scripts import each other."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module
