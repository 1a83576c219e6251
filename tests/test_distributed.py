"""Multi-process training on the CPU (gloo): RecBole 1.2.1's DDP shims (compat 4-6) and
``run_hydra.py --nproc``."""

import hashlib
import json
import socket
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from recbole.config import Config

import run_hydra
from recbole_hydra import compat, training
from recbole_hydra.checkpoint import read_checkpoint
from recbole_hydra.config import make_config
from recbole_hydra.errors import UsageError
from recbole_hydra.model.hydra import Hydra
from recbole_hydra.quick_start import evaluate_checkpoint
from tests.conftest import TINY_HYDRA, ml100k_slice, quiet_config

METRICS = {f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 50, 200)}


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def checksum(state_dict):
    digest = hashlib.md5()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def one_process_group(tmp_path):
    """A config of rank 0 in a gloo group of one, in this process (compat.init_distributed)."""
    data = ml100k_slice(tmp_path / "data", n_users=30)
    config = make_config("Hydra", "ml-100k-slice", config_dict=quiet_config(data, **TINY_HYDRA))
    backend = compat.init_distributed(config, 0, 1, 1, "localhost", free_port(), timeout_s=60)
    try:
        yield config, backend
    finally:
        dist.destroy_process_group()


def test_shim_process_group_on_cpu_with_gloo(one_process_group):
    """RecBole's Config joins a group only with NCCL on CUDA; compat.init_distributed uses gloo
    and the CPU here, and sets RecBole's keys as RecBole's own branch does."""
    config, backend = one_process_group
    assert backend == "gloo" and dist.get_backend() == "gloo" and dist.get_world_size() == 1
    assert config["device"] == torch.device("cpu") and config["single_spec"] is False
    keys = ("local_rank", "world_size", "nproc", "offset")
    assert [config[k] for k in keys] == [0, 1, 1, 0]
    plain = compat.single_process_config(config)
    assert plain["single_spec"] is True and plain["world_size"] is None
    assert config["world_size"] == 1  # the rank's own config is untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="RecBole's own path works on CUDA")
def test_recbole_config_cannot_join_a_group_without_cuda():
    with pytest.raises(RuntimeError, match="NCCL"):
        Config(
            model=Hydra,
            dataset="ml-100k",
            config_dict={
                "local_rank": 0,
                "nproc": 1,
                "world_size": 1,
                "offset": 0,
                "ip": "localhost",
                "port": free_port(),
            },
        )


def test_shim_ddp_wraps_a_cpu_model(one_process_group):
    """RecBole passes device_ids=[local_rank], which torch refuses for a CPU module."""
    config, _ = one_process_group
    from recbole.data import data_preparation

    from recbole_hydra.registry import build_model, create_dataset, get_trainer

    train, _, _ = data_preparation(config, create_dataset(config))
    model = build_model(config, train._dataset)
    with pytest.raises(ValueError, match="device_ids"):
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    trainer = get_trainer(config)(config, model)  # RecBole's AbstractTrainer wraps it in DDP
    assert trainer.distributed_model.device_ids is None
    assert trainer._train_epoch(train, 0) > 0  # RecBole's reduce-hook trick runs on gloo


def test_shim_ensure_dir_survives_a_concurrent_mkdir(tmp_path, monkeypatch):
    """Another rank creates log/ between RecBole's existence check and its makedirs."""
    import os

    import recbole.utils.logger

    target = str(tmp_path / "log")
    os.mkdir(target)
    exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p != target and exists(p))
    with pytest.raises(FileExistsError):
        compat.recbole_ensure_dir(target)
    compat.ensure_dir(target)
    assert recbole.utils.logger.ensure_dir is compat.ensure_dir


def _rank(local_rank, data, out, port):
    """One rank of the 2-process test; records what it saw in ``out/rank<i>.json``."""
    torch.set_num_threads(1)
    import recbole.trainer.trainer as trainer_module

    from recbole_hydra.trainer import GenerativeTrainer

    seen, loaded, trained, train_rows = [], [], [], []
    calculate_loss = Hydra.calculate_loss
    train_epoch = GenerativeTrainer._train_epoch
    save = GenerativeTrainer._save_checkpoint
    fit = GenerativeTrainer.fit
    load = trainer_module.torch.load
    prepare = training.data_preparation

    def counted_loss(self, interaction):
        seen[-1].append(interaction["user_id"].tolist())
        return calculate_loss(self, interaction)

    def new_epoch(self, *args, **kwargs):
        seen.append([])
        return train_epoch(self, *args, **kwargs)

    def slow_save(self, *args, **kwargs):
        time.sleep(1.0)  # rank 0 writes late: rank 1 must not load before it has written
        save(self, *args, **kwargs)

    def noted_fit(self, *args, **kwargs):
        out_ = fit(self, *args, **kwargs)
        trained.append(checksum(self.model.state_dict()))
        return out_

    def noted_load(path, *args, **kwargs):
        checkpoint = load(path, *args, **kwargs)
        loaded.append([str(path), checksum(checkpoint["state_dict"])])
        return checkpoint

    def noted_preparation(config, dataset):
        train, valid, test = prepare(config, dataset)
        train_rows.extend(train._dataset.inter_feat["user_id"].tolist())
        return train, valid, test

    Hydra.calculate_loss, GenerativeTrainer._train_epoch = counted_loss, new_epoch
    GenerativeTrainer._save_checkpoint = slow_save
    if local_rank == 1:  # rank 1's clock reads another second when it names its checkpoint
        trainer_module.get_local_time = lambda: "Jan-01-2000_00-00-00"
    GenerativeTrainer.fit, trainer_module.torch.load = noted_fit, noted_load
    training.data_preparation = noted_preparation
    # one epoch: rank 0's only checkpoint is written a second after rank 1 could first load it
    config = quiet_config(data, epochs=1, train_batch_size=32, time_budget_s=600, **TINY_HYDRA)
    result = training.run_rank(
        local_rank,
        "Hydra",
        "ml-100k-slice",
        None,
        config,
        True,
        world_size=2,
        nproc=2,
        port=port,
        timeout_s=120,
    )
    record = {
        "seen": seen,
        "loaded": loaded,
        "trained": trained,
        "train_rows": train_rows,
        "model_file": result["model_file"],
        "test_result": dict(result["test_result"]),
    }
    Path(out, f"rank{local_rank}.json").write_text(json.dumps(record))


def test_two_gloo_processes_share_the_work_and_the_checkpoint(tmp_path):
    data = ml100k_slice(tmp_path / "data", n_users=40)
    torch.multiprocessing.spawn(_rank, args=(data, str(tmp_path), free_port()), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))

    # both ranks take part: per epoch each trains on its own half of every batch of 32
    rows = Counter(r0["train_rows"])
    assert r0["train_rows"] == r1["train_rows"] and len(r0["seen"]) == len(r1["seen"]) == 1
    (epoch0,), (epoch1,) = r0["seen"], r1["seen"]
    assert len(epoch0) == len(epoch1) > 1 and all(len(b) <= 16 for b in epoch0 + epoch1)
    n0, n1 = sum(map(len, epoch0)), sum(map(len, epoch1))
    assert n0 == n1 and n0 + n1 in (len(r0["train_rows"]), len(r0["train_rows"]) + 1)
    together = Counter(u for b in epoch0 + epoch1 for u in b)  # every row once (one padded)
    assert not rows - together and sum((together - rows).values()) == n0 + n1 - rows.total()
    # DDP averaged the gradients: the ranks end with the same weights
    assert r0["trained"] == r1["trained"]
    # rank 1 loaded rank 0's best checkpoint, once rank 0 had written it
    assert r0["model_file"] == r1["model_file"] and r0["loaded"] == r1["loaded"]
    assert len(r0["loaded"]) == 1 and r0["loaded"][0][0] == r0["model_file"]
    assert r0["test_result"] == r1["test_result"] and set(r0["test_result"]) == METRICS

    # the artefacts of a plain run: one checkpoint that loads without a process group, a log
    assert [p.name for p in (tmp_path / "saved").iterdir()] == [Path(r0["model_file"]).name]
    assert list((tmp_path / "log" / "Hydra").glob("Hydra-ml-100k-slice-*.log"))
    with pytest.MonkeyPatch.context() as mp:  # as in a fresh process that built no Config
        mp.delattr(np, "float", raising=False)
        again = evaluate_checkpoint(r0["model_file"], show_progress=False)
    assert set(again["test_result"]) == METRICS
    assert read_checkpoint(r0["model_file"])["config"]["single_spec"] is True


def test_cli_nproc_dispatches_to_the_process_group(monkeypatch, capsys):
    calls = []

    def fake_run(*args, **kwargs):
        calls.append((args, kwargs))
        return None  # what a node without global rank 0 gets

    monkeypatch.setattr(training, "run_distributed", fake_run)
    code = run_hydra.main(
        [
            "--nproc=2",
            "--world_size=4",
            "--ip=10.0.0.1",
            "--port=29500",
            "--group_offset=2",
            "--epochs=3",
        ]
    )
    assert code == 0 and "ranks 2..3 finished" in capsys.readouterr().out
    ((args, kwargs),) = calls
    assert args[:2] == ("Hydra", "ml-100k") and args[3] == {"epochs": 3}
    assert kwargs == dict(
        saved=True, nproc=2, world_size=4, ip="10.0.0.1", port=29500, group_offset=2
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--nproc=0"], "--nproc must be >= 1"),
        (["--nproc=2", "--world_size=2", "--group_offset=1"], "do not fit in --world_size=2"),
        (["--nproc=2", "--tune"], "--tune and --nproc"),
    ],
)
def test_cli_bad_group_is_one_line(capsys, argv, message):
    code = run_hydra.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_check_group():
    assert training.check_group(2, -1, 0) == 2
    assert training.check_group(2, 4, 2) == 4
    with pytest.raises(UsageError):
        training.check_group(3, 4, 2)
