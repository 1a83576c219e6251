"""Multi-process training: RecBole's ``nproc``/``world_size``/``ip``/``port``/``group_offset``
for plugin models and for RecBole's models run through ``recbole_hydra.quick_start``.

``run`` starts ``nproc`` processes on this machine (``torch.multiprocessing.spawn``); process
``i`` is rank ``group_offset + i`` of a group of ``world_size`` processes that meet at
``tcp://ip:port``. Each rank builds the config as a single-process run would, joins the group
(gloo on the CPU, NCCL on ``cuda:<local_rank>``: ``compat.init_distributed``) and then runs
``quick_start.train_and_test`` unchanged: RecBole's own machinery does the rest (its dataloaders
shard every epoch with a ``DistributedSampler`` and split each batch of ``train_batch_size``
between the ranks, its trainer all-reduces the gradients through DDP and averages the evaluation
over the ranks, local rank 0 logs and writes the checkpoint). The RecBole 1.2.1 fixes this needs
are shims 4-6 of ``recbole_hydra.compat``.

On the CPU each process gets ``cpu_count // nproc`` intra-op threads.
"""

import os

import torch

from recbole_hydra import compat
from recbole_hydra.quick_start import UsageError, make_config, train_and_test


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


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1,
        world_size=-1, ip="localhost", port=5678, group_offset=0, timeout_s=None):
    """Train and test on ``nproc`` local processes of a group of ``world_size``; returns the
    result of global rank 0 (``quick_start.run``'s dict) on the node that has it, else None."""
    world_size = check_group(nproc, world_size, group_offset)
    make_config(model, dataset, config_file_list, config_dict)  # bad input: one line, no spawn
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    group = (world_size, nproc, ip, port, group_offset, timeout_s)
    try:
        mp.spawn(_spawned, args=(model, dataset, config_file_list, config_dict, saved, group,
                                 queue), nprocs=nproc, join=True)
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


def run_rank(local_rank, model, dataset, config_file_list, config_dict, saved, world_size,
             nproc, ip="localhost", port=5678, group_offset=0, timeout_s=None):
    """The work of one process: join the group as rank ``group_offset + local_rank``, train and
    test, leave the group. Returns this rank's result."""
    import torch.distributed as dist

    config = make_config(model, dataset, config_file_list, config_dict)
    compat.init_distributed(config, local_rank, world_size, nproc, ip, port, group_offset,
                            timeout_s=timeout_s)
    try:
        if config["device"].type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
        return train_and_test(config, saved=saved)
    finally:
        dist.destroy_process_group()


def _spawned(local_rank, model, dataset, config_file_list, config_dict, saved, group, queue):
    world_size, nproc, ip, port, group_offset, timeout_s = group
    try:
        result = run_rank(local_rank, model, dataset, config_file_list, config_dict, saved,
                          world_size, nproc, ip, port, group_offset, timeout_s)
    except ValueError as err:  # UsageError included
        queue.put(("error", str(err)))
        raise
    if group_offset + local_rank == 0:
        queue.put(("result", result))
