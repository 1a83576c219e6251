"""Every shim that RecBole 1.2.1 needs on today's stack, in one place; ``install`` applies them.

1. Checkpoints. RecBole's ``Trainer._save_checkpoint`` pickles its ``Config`` object, which only
   an unpickler that runs code can read (torch >= 2.6 refuses it by default), names the file by
   the second the trainer was built (two runs started in the same second write one file) and
   writes over the best checkpoint in place (a kill during the save truncates it).
   ``Trainer._save_checkpoint``, ``Trainer.resume_checkpoint`` and the checkpoint name that
   ``Trainer.__init__`` picks are the package's (``recbole_hydra.checkpoint``: plain data that
   ``torch.load(weights_only=True)`` reads, a unique name, a rename over the old file), and
   RecBole's trainer module gets the package's reader as its ``torch.load``. RecBole's
   ``load_data_and_model`` is the package's (also through a reference taken before
   ``recbole_hydra`` was imported: shim 3); ``torch.load`` elsewhere is untouched.
2. Warnings RecBole 1.2.1 raises on today's pandas that no user can act on (chained-assignment
   FutureWarnings inside its loader): ``quiet_known_warnings`` filters exactly those; the CLI
   calls it.
3. Plugin models in RecBole's own entry points. ``load_data_and_model`` (and ``run_recbole``) look
   models up with ``recbole.utils.get_model``, which only knows ``recbole.model``, and pick the
   dataset class by model name. Their module globals are pointed at the plugin-aware versions,
   which fall back to RecBole's for its own models.

Multi-process training (``recbole_hydra.training``, ``run(..., nproc=N)``).
RecBole 1.2.1's DDP only runs on CUDA with NCCL, and its evaluation can read the wrong checkpoint:

4. Process group and device. ``Config._init_device`` asserts one CUDA device per process, always
   uses the NCCL backend and puts every process on ``cuda:<local_rank>``. ``init_distributed``
   replaces that branch for a config built single-process: gloo and the CPU where CUDA is absent
   or ``gpu_id`` is empty, else NCCL on ``cuda:<local_rank>`` (with RecBole's check that there is
   a GPU per process); RecBole's keys (``local_rank``, ``world_size``, ``nproc``, ``offset``,
   ``single_spec``) and its quiet non-zero ranks are set as its own branch sets them.
5. DDP on the CPU. RecBole's ``AbstractTrainer`` wraps the model in
   ``DistributedDataParallel(model, device_ids=[local_rank])``, which torch refuses for a CPU
   module. ``distributed_data_parallel`` passes ``device_ids`` only for a module on one CUDA
   device; RecBole's trainer module gets it as its ``DistributedDataParallel``.
6. One checkpoint for all ranks. Each rank names its checkpoint when its trainer is built, only
   local rank 0 writes it, and after ``fit`` every rank loads "its" best checkpoint for the test:
   a rank that picked another name, or that gets there before rank 0 has written the file, fails
   or tests other weights. ``share_checkpoint`` gives every rank rank 0's file name (in its own
   ``checkpoint_dir``), waits for all ranks (a barrier, so the file is written) before any loads
   it, and saves a single-process copy of the config, so that the file loads like a plain run's
   (``load_data_and_model``, ``--checkpoint``) without a process group.
7. Directories made by processes started together. RecBole's ``ensure_dir`` checks that a
   directory is missing and then ``os.makedirs`` it, which raises ``FileExistsError`` when another
   rank creates ``log/`` or ``saved/`` in between: ranks that start together crash at random.
   ``ensure_dir`` creates it with ``exist_ok=True``; RecBole's modules that call it get it.
"""

import copy
import importlib
import os
import types
import warnings

import torch
from recbole.utils.utils import ensure_dir as recbole_ensure_dir  # noqa: F401  (shim 7's test)
from torch.nn.parallel import DistributedDataParallel

#: RecBole's keys for a multi-process run; a single-process config has none of them but
#: ``local_rank: 0`` and ``single_spec: True``.
DISTRIBUTED_KEYS = ("world_size", "nproc", "offset", "ip", "port")


def quiet_known_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole(\.|$)")


def _torch_with_load(load):
    """A stand-in for the ``torch`` module whose ``load`` is ``load``."""
    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)
    proxy.load = load
    return proxy


def init_distributed(
    config, local_rank, world_size, nproc=None, ip="localhost", port=5678, offset=0, timeout_s=None
):
    """Join the process group as rank ``offset + local_rank`` of ``world_size`` and make ``config``
    (built single-process) the config of that rank, as RecBole's ``Config._init_device`` would,
    on the CPU with gloo or on ``cuda:<local_rank>`` with NCCL (shim 4). Returns the backend."""
    import datetime

    import torch.distributed as dist

    nproc = world_size if nproc is None else nproc
    gpu_id = str(config["gpu_id"] or "")
    use_cuda = bool(gpu_id) and torch.cuda.is_available()
    if use_cuda and len(gpu_id.split(",")) < nproc:
        raise ValueError(
            f"{nproc} processes on this node need {nproc} GPUs, but gpu_id is {gpu_id!r}: "
            "list one per process (--gpu_id=0,1,...) or set --gpu_id= to train on the CPU"
        )
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{ip}:{port}",
        rank=offset + local_rank,
        world_size=world_size,
        **kwargs,
    )
    config["local_rank"] = local_rank
    config["world_size"], config["nproc"], config["offset"] = world_size, nproc, offset
    config["ip"], config["port"] = ip, port
    config["single_spec"] = False
    config["device"] = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if local_rank != 0:
        config["state"], config["show_progress"], config["verbose"] = "error", False, False
    return backend


def single_process_config(config):
    """A copy of a rank's config as a single-process run on rank 0's device would have it."""
    plain = copy.copy(config)
    plain.final_config_dict = {
        k: v for k, v in config.final_config_dict.items() if k not in DISTRIBUTED_KEYS
    }
    plain["local_rank"], plain["single_spec"] = 0, True
    if plain["device"] is not None and plain["device"].type == "cuda":
        plain["device"] = torch.device("cuda", 0)
    return plain


def distributed_data_parallel(module, device_ids=None, output_device=None, **kwargs):
    """``DistributedDataParallel`` that passes ``device_ids`` only for a module on one CUDA
    device, as torch requires (shim 5)."""
    devices = {p.device for p in module.parameters()}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        device_ids = output_device = None
    return DistributedDataParallel(
        module, device_ids=device_ids, output_device=output_device, **kwargs
    )


def share_checkpoint(trainer):
    """Make the ranks of a multi-process run save and load one checkpoint (shim 6): rank 0's
    file name, a barrier before loading it, a single-process config inside it."""
    import torch.distributed as dist

    name = [os.path.basename(trainer.saved_model_file)]
    dist.broadcast_object_list(name, src=0)
    trainer.saved_model_file = os.path.join(trainer.checkpoint_dir, name[0])
    plain = single_process_config(trainer.config)
    save_checkpoint, evaluate = trainer._save_checkpoint, trainer.evaluate

    def save_with_plain_config(epoch, verbose=True, **kwargs):
        if trainer.config["local_rank"] != 0:
            return
        config, trainer.config = trainer.config, plain
        try:
            save_checkpoint(epoch, verbose=verbose, **kwargs)
        finally:
            trainer.config = config

    def evaluate_after_save(eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            dist.barrier()  # every rank is past fit, so rank 0 has written its best checkpoint
        return evaluate(
            eval_data,
            load_best_model=load_best_model,
            model_file=model_file,
            show_progress=show_progress,
        )

    trainer._save_checkpoint, trainer.evaluate = save_with_plain_config, evaluate_after_save
    return trainer


def ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` without its check-then-create race (shim 7)."""
    os.makedirs(dir_path, exist_ok=True)


#: the RecBole modules that call ``ensure_dir`` through a module global
ENSURE_DIR_USERS = (
    "recbole.utils",
    "recbole.utils.utils",
    "recbole.utils.logger",
    "recbole.trainer.trainer",
    "recbole.data.utils",
    "recbole.data.dataset.dataset",
)


#: the package's functions that ``install`` put into RecBole (shim 3's ``_call_ours`` reads it)
INSTALLED = {}


def install(
    get_model,
    create_dataset,
    read_checkpoint,
    load_data_and_model,
    save_checkpoint,
    resume_checkpoint,
    checkpoint_name,
):
    """Apply the shims (idempotent) with the package's model and dataset resolution
    (``recbole_hydra.registry``) and checkpoints (``recbole_hydra.checkpoint``). Import
    ``recbole_hydra`` before using RecBole's entry points."""
    import recbole.quick_start
    import recbole.quick_start.quick_start as qs
    import recbole.trainer.trainer as trainer_module

    INSTALLED.update(load_data_and_model=load_data_and_model, checkpoint_name=checkpoint_name)
    trainer_module.torch = _torch_with_load(read_checkpoint)
    trainer_module.DistributedDataParallel = distributed_data_parallel
    trainer_class = trainer_module.Trainer
    trainer_class._save_checkpoint = save_checkpoint
    trainer_class.resume_checkpoint = resume_checkpoint
    if "recbole" not in INSTALLED:
        INSTALLED["recbole"] = {"Trainer.__init__": trainer_class.__init__}
        trainer_class.__init__ = _trainer_init
    for name in ENSURE_DIR_USERS:
        importlib.import_module(name).ensure_dir = ensure_dir
    qs.get_model = get_model
    qs.create_dataset = create_dataset
    recbole_loader = qs.load_data_and_model
    qs.load_data_and_model = recbole.quick_start.load_data_and_model = load_data_and_model
    if (
        recbole_loader is not load_data_and_model
        and recbole_loader.__code__ is not _call_ours.__code__
    ):
        # RecBole's function imports torch locally, so no module global reaches its torch.load;
        # a reference taken before this import (``from recbole.quick_start import
        # load_data_and_model`` above ``import recbole_hydra``) gets the package's version too.
        recbole_loader.__code__ = _call_ours.__code__


def _trainer_init(self, config, model):
    """RecBole's ``Trainer.__init__``, then a checkpoint name of the package's (shim 1)."""
    INSTALLED["recbole"]["Trainer.__init__"](self, config, model)
    self.saved_model_file = INSTALLED["checkpoint_name"](self.checkpoint_dir, config["model"])


def _call_ours(model_file):
    # Runs as RecBole's own function, with its module's globals: it finds the package's loader
    # through this module.
    from recbole_hydra import compat

    return compat.INSTALLED["load_data_and_model"](model_file)
