"""Train and test a model the RecBole way, in one process or in a process group.

``run`` builds the config (``recbole_hydra.config``), then RecBole does the work: its data
pipeline and leave-one-out split, its Trainer (or the plugin model's, ``recbole_hydra.trainer``)
and its evaluator. After each validation the run's checkpoint gets the newest training state,
so ``resume`` continues an interrupted run; Ctrl-C raises ``TrainingInterrupted`` naming that
checkpoint. ``evaluate_checkpoint`` re-evaluates a saved model on its own split.

Multi-process: ``run(..., nproc=N)`` starts ``nproc`` processes on this machine
(``torch.multiprocessing.spawn``); process ``i`` is rank ``group_offset + i`` of a group of
``world_size`` processes that meet at ``tcp://ip:port``. Each rank builds the config as a
single-process run would, joins the group (gloo on the CPU, NCCL on ``cuda:<local_rank>``:
``compat.init_distributed``) and then runs ``train_and_test`` unchanged: RecBole's dataloaders
shard every epoch with a ``DistributedSampler`` and split each batch of ``train_batch_size``
between the ranks, its trainer all-reduces the gradients through DDP and averages the evaluation
over the ranks, local rank 0 logs and writes the checkpoint. The RecBole 1.2.1 fixes this needs
are shims 4-7 of ``recbole_hydra.compat``. On the CPU each process gets ``cpu_count // nproc``
intra-op threads.
"""

import os
import sys
from logging import getLogger

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from recbole.data import data_preparation
from recbole.utils import init_logger, init_seed

from recbole_hydra import checkpoint, compat
from recbole_hydra.config import check_dataset, make_config
from recbole_hydra.errors import TrainingInterrupted, UsageError
from recbole_hydra.layers import kernels
from recbole_hydra.registry import build_model, create_dataset, get_trainer
from recbole_hydra.trainer import mask_history, record_history


def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    epoch_callback=None,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port=5678,
    group_offset=0,
):
    """Train and test ``model`` (a name or class) on ``dataset``; returns RecBole's result dict
    plus ``model_file``, ``n_params``, ``epochs``, ``stopped_early`` (whether early stopping, not
    the ``epochs`` cap or a time budget, ended training) and ``history`` (per epoch: training
    seconds, valid score and wall clock since training started).

    ``epoch_callback(epoch, entry, trainer)``, if given, is called after each validation with the
    number of epochs trained so far, that epoch's history entry and the trainer (the tuner reports
    to Ray Tune from it). ``nproc``/``world_size``/``ip``/``port``/``group_offset`` are RecBole's
    multi-process arguments: with ``nproc != 1`` or ``world_size > 0`` the run is spread over
    processes and this returns global rank 0's result (None on a machine without it)."""
    if nproc != 1 or world_size > 0:
        return run_distributed(
            model,
            dataset,
            config_file_list,
            config_dict,
            saved=saved,
            nproc=nproc,
            world_size=world_size,
            ip=ip,
            port=port,
            group_offset=group_offset,
        )
    config = make_config(model, dataset, config_file_list, config_dict)
    return train_and_test(config, saved=saved, epoch_callback=epoch_callback)


def resume(model_file, config_dict=None, epoch_callback=None):
    """Continue the run whose checkpoint is ``model_file`` (or the newest checkpoint in that
    directory) from its newest training state, writing to the same file; ``config_dict`` may
    change only ``checkpoint.RESUME_KEYS``. Returns what ``run`` returns."""
    model_file = checkpoint.newest_checkpoint(model_file)
    config = checkpoint.resume_config(model_file, config_dict)
    return train_and_test(config, epoch_callback=epoch_callback, resume_from=model_file)


def train_and_test(config, saved=True, epoch_callback=None, resume_from=None):
    """``run`` from a built config (single-process, or one rank of a process group), with the
    optional kernels on or off as ``use_kernels`` says (a process-wide switch, for this run)."""
    with kernels.use(config["use_kernels"] is not False):
        return _train_and_test(config, saved, epoch_callback, resume_from)


def _train_and_test(config, saved, epoch_callback, resume_from):
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    check_dataset(config, dataset)
    fingerprint = checkpoint.dataset_fingerprint(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = build_model(config, train_data._dataset)
    logger.info(model)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    trainer = mask_history(get_trainer(config)(config, model))
    checkpoint.prepare_trainer(trainer, fingerprint, train_data)
    if resume_from is not None:
        trainer.resume_checkpoint(resume_from)
    if not config["single_spec"]:
        compat.share_checkpoint(trainer)
    history = record_history(
        trainer, config["time_budget_s"], epoch_callback, distributed=not config["single_spec"]
    )
    saved_states = []

    def save_training_state(epoch, valid_score):
        best = getattr(trainer, "best_checkpoint", None)
        if best is None or best["epoch"] != epoch:  # else RecBole has just saved this epoch
            trainer._save_checkpoint(epoch, verbose=False, resume_point=True)
        saved_states.append(epoch)

    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data,
            valid_data,
            saved=saved,
            show_progress=config["show_progress"],
            callback_fn=save_training_state if saved else None,
        )
    except KeyboardInterrupt:
        last = saved_states[-1] if saved_states else trainer.start_epoch - 1
        has_state = saved and os.path.isfile(trainer.saved_model_file)
        raise TrainingInterrupted(trainer.saved_model_file if has_state else None, last) from None
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    logger.info(f"best valid : {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "model_file": trainer.saved_model_file if saved else None,
        "n_params": n_params,
        "epochs": len(history),
        # RecBole's early stopping: more than stopping_step evaluations without a better score
        "stopped_early": trainer.cur_step > trainer.stopping_step,
        "history": history,
    }


def evaluate_checkpoint(model_file, config_dict=None, trust=False, show_progress=None):
    """Re-evaluate a saved checkpoint on its own valid and test split; ``config_dict`` may
    change how (``checkpoint.EVALUATION_KEYS``: topk, metrics, data_path, ...), ``trust`` also
    reads a pickled RecBole checkpoint."""
    config, model, _, _, valid_data, test_data = checkpoint.load_data_and_model(
        model_file, config_dict, trust=trust
    )
    if show_progress is None:
        show_progress = config["show_progress"]
    trainer = mask_history(get_trainer(config)(config, model))
    with kernels.use(config["use_kernels"] is not False):
        valid_result = trainer.evaluate(
            valid_data, load_best_model=False, show_progress=show_progress
        )
        test_result = trainer.evaluate(
            test_data, load_best_model=False, show_progress=show_progress
        )
    return {"best_valid_result": valid_result, "test_result": test_result, "model_file": model_file}


def results_table(result):
    """The valid/test markdown table of a ``run`` or ``evaluate_checkpoint`` result."""
    rows = [("valid", result["best_valid_result"]), ("test", result["test_result"])]
    metrics = list(result["test_result"])
    lines = ["| split | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in metrics) + " |"
        for name, values in rows
    ]
    return "\n".join(lines) + "\n"


# -- multi-process ---------------------------------------------------------------------------
def check_group(nproc, world_size, group_offset):
    """RecBole's conventions: ``world_size`` -1 means ``nproc``; this node's ranks
    ``group_offset .. group_offset + nproc - 1`` must lie inside the group."""
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    world_size = nproc if world_size is None or world_size <= 0 else world_size
    if group_offset < 0 or group_offset + nproc > world_size:
        raise UsageError(
            f"ranks {group_offset}..{group_offset + nproc - 1} of this node (--group_offset="
            f"{group_offset}, --nproc={nproc}) do not fit in --world_size={world_size}"
        )
    return world_size


def run_distributed(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port=5678,
    group_offset=0,
    timeout_s=None,
):
    """Train and test on ``nproc`` local processes of a group of ``world_size``; returns the
    result of global rank 0 (``run``'s dict) on the node that has it, else None."""
    world_size = check_group(nproc, world_size, group_offset)
    make_config(model, dataset, config_file_list, config_dict)  # bad input: one line, no spawn
    queue = mp.get_context("spawn").SimpleQueue()
    group = (world_size, nproc, ip, port, group_offset, timeout_s)
    try:
        mp.spawn(
            _spawned,
            args=(model, dataset, config_file_list, config_dict, saved, group, queue),
            nprocs=nproc,
            join=True,
        )
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        errors = []
        while not queue.empty():
            kind, value = queue.get()
            if kind == "error":
                errors.append(value)
        if errors:  # a configuration the model refused: one line, as in a single process
            raise UsageError(errors[0]) from None
        raise
    results = []
    while not queue.empty():
        kind, value = queue.get()
        if kind == "result":
            results.append(value)
    return results[0] if results else None


def run_rank(
    local_rank,
    model,
    dataset,
    config_file_list,
    config_dict,
    saved,
    world_size,
    nproc,
    ip="localhost",
    port=5678,
    group_offset=0,
    timeout_s=None,
):
    """The work of one process: join the group as rank ``group_offset + local_rank``, train and
    test, leave the group. Returns this rank's result."""
    config = make_config(model, dataset, config_file_list, config_dict)
    compat.init_distributed(
        config, local_rank, world_size, nproc, ip, port, group_offset, timeout_s=timeout_s
    )
    try:
        if config["device"].type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
        return train_and_test(config, saved=saved)
    finally:
        dist.destroy_process_group()


def _spawned(local_rank, model, dataset, config_file_list, config_dict, saved, group, queue):
    world_size, nproc, ip, port, group_offset, timeout_s = group
    try:
        result = run_rank(
            local_rank,
            model,
            dataset,
            config_file_list,
            config_dict,
            saved,
            world_size,
            nproc,
            ip,
            port,
            group_offset,
            timeout_s,
        )
    except ValueError as err:  # UsageError included
        queue.put(("error", str(err)))
        raise
    if group_offset + local_rank == 0:
        queue.put(("result", result))
