"""Train and test a model the RecBole way, plugin models (Hydra, Mamba4Rec, HSTU) included.

    python run_hydra.py                                   # Hydra on ml-100k (ships with RecBole)
    python run_hydra.py --model=SASRec --dataset=ml-100k --epochs=5
    python run_hydra.py --config_files="my.yaml other.yaml" --hidden_size=128
    python run_hydra.py --checkpoint=saved/Hydra-....pth  # re-evaluate a saved model
    python run_hydra.py --checkpoint=saved/Hydra-....pth --topk="[10,20]"  # evaluated otherwise
    python run_hydra.py --resume_from=saved/Hydra-....pth # continue an interrupted run
    python run_hydra.py --recommend --checkpoint=saved/Hydra-....pth --users=196,186 [--k=10]
    python run_hydra.py --recommend --checkpoint=... --users=196 --replay=5   # event by event
    python run_hydra.py --tune --params_file properties/tune/hydra.hyper --num_samples=8
    python run_hydra.py --tune --resume                   # continue an interrupted search
    python run_hydra.py --nproc=2                         # DDP: gloo on the CPU, NCCL on GPUs

Flags are RecBole's: ``--model``, ``--dataset``, ``--config_files`` and any ``--key=value``
config override. Bad input ends in one line on stderr and exit status 2; Ctrl-C during
training in one line naming the checkpoint to resume from, exit status 130. The same command line
is ``recbole-hydra`` and ``python -m recbole_hydra`` where the package is installed.
"""

import argparse
import ast
import os
import sys

from recbole_hydra import compat
from recbole_hydra.errors import TrainingInterrupted, UsageError, command, program
from recbole_hydra.serving import recommend
from recbole_hydra.training import evaluate_checkpoint, results_table, resume, run
from recbole_hydra.tune import search


def parse_args(argv):
    # No abbreviations: "--mod=X" would be --model to argparse but a config key to a repeat check.
    parser = argparse.ArgumentParser(
        prog=program(),
        allow_abbrev=False,
        description=__doc__.replace("python run_hydra.py", command()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", "-m", default="Hydra", help="plugin or RecBole model name")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="RecBole dataset name")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--checkpoint", default=None, help="re-evaluate this saved model")
    parser.add_argument(
        "--resume_from",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run of this checkpoint (or of the newest one in this directory)",
    )
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="also load a pickled RecBole checkpoint (it can run code: trusted files only)",
    )
    parser.add_argument(
        "--recommend",
        action="store_true",
        help="with --checkpoint (Hydra): print top-k items for --users",
    )
    parser.add_argument("--users", default="", help="comma-separated user tokens for --recommend")
    parser.add_argument("--k", type=int, default=10, help="how many items --recommend prints")
    parser.add_argument(
        "--replay",
        type=int,
        default=0,
        help="--recommend: feed each user's last N events one by one",
    )
    tune = parser.add_argument_group("hyperparameter search (Ray Tune)")
    tune.add_argument("--tune", action="store_true", help="search the space of --params_file")
    tune.add_argument("--params_file", default=None, help="RecBole hyper file of the space")
    tune.add_argument("--num_samples", type=int, default=8, help="trials to sample")
    tune.add_argument("--cpus_per_trial", type=float, default=1, help="CPUs Ray gives a trial")
    tune.add_argument("--gpus_per_trial", type=float, default=0, help="GPUs Ray gives a trial")
    tune.add_argument("--max_concurrent", type=int, default=None, help="trials run at once")
    tune.add_argument(
        "--ray_address",
        default=None,
        help="join this Ray cluster (default: start a local Ray, stop it after)",
    )
    tune.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="continue the newest (or DIR's) interrupted search",
    )
    tune.add_argument("--tune_dir", default="tune_results", help="where searches are written")
    ddp = parser.add_argument_group("multi-process training (RecBole's flags)")
    ddp.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    ddp.add_argument(
        "--world_size", type=int, default=-1, help="processes on all machines (default: --nproc)"
    )
    ddp.add_argument("--ip", default="localhost", help="address of the machine of rank 0")
    ddp.add_argument("--port", type=int, default=5678, help="free port on that machine")
    ddp.add_argument(
        "--group_offset", type=int, default=0, help="global rank of this machine's first process"
    )
    _refuse_repeated_flags(argv)
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            raise UsageError(
                f"unrecognised argument {arg!r}: config overrides look like --key=value"
            )
        flags = [f for f in parser._option_string_actions if f.startswith("--" + key)]
        if flags:
            raise UsageError(f"--{key} is not a flag: give it in full ({', '.join(flags)})")
        overrides[key] = _parse_value(value)
    return args, overrides


def _refuse_repeated_flags(argv):
    # Which of two values was meant is a guess (argparse and RecBole disagree): ask for one.
    seen = set()
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].partition("=")[0]
        elif arg[:2] in ("-m", "-d"):
            name = {"-m": "model", "-d": "dataset"}[arg[:2]]
        else:
            continue  # a value
        if not name:
            continue  # "--": the end of the options
        if name in seen:
            raise UsageError(f"--{name} is given twice: give it once")
        seen.add(name)


def _parse_value(value):
    # RecBole's command-line convention: Python literals where they parse, else the string.
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def print_results(result, out=None):
    out = out or sys.stdout
    out.write(results_table(result))
    if result.get("model_file"):
        out.write(f"checkpoint: {result['model_file']}\n")


def print_search(summary, out=None):
    out = out or sys.stdout
    out.write(summary["table_md"].read_text())
    out.write(f"\ntable: {summary['table_md']} and {summary['table_csv']}\n")
    if summary["best"] is not None:
        out.write(f"best config: {summary['best_yaml']}\n")
    if summary["unfinished"]:
        out.write(
            f"unfinished trials: {summary['unfinished']}; continue the search with: "
            f"{command()} --tune --resume={summary['experiment_dir']}\n"
        )


def interrupted_line(stop):
    if stop.checkpoint is None:
        return f"{program()}: interrupted before a checkpoint was written: nothing to resume\n"
    epoch = f" (after epoch {stop.epoch})" if stop.epoch is not None and stop.epoch >= 0 else ""
    return (
        f"{program()}: interrupted; the last good checkpoint is {stop.checkpoint}{epoch}: "
        f"continue with {command()} --resume_from={stop.checkpoint}\n"
    )


def main(argv=None):
    compat.quiet_known_warnings()
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        if args.recommend:
            if not args.checkpoint or not args.users:
                raise UsageError("--recommend needs --checkpoint=PATH and --users=U1,U2,...")
            if not os.path.isfile(args.checkpoint):
                raise UsageError(f"checkpoint {args.checkpoint} does not exist")
            recommend(
                args.checkpoint,
                args.users.split(","),
                k=args.k,
                replay=args.replay,
                trust=args.trust_checkpoint,
            )
            return 0
        files = args.config_files.split() if args.config_files else None
        distributed = args.nproc != 1 or args.world_size > 0
        if args.tune:
            if distributed:
                raise UsageError(
                    "--tune and --nproc/--world_size cannot be combined: each "
                    "trial is one process (use --cpus_per_trial/--gpus_per_trial)"
                )
            summary = search(
                args.model,
                args.dataset,
                params_file=args.params_file,
                config_file_list=files,
                config_dict=overrides,
                num_samples=args.num_samples,
                cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial,
                max_concurrent=args.max_concurrent,
                ray_address=args.ray_address,
                resume=args.resume,
                tune_dir=args.tune_dir,
            )
            print_search(summary)
            if summary["best"] is None and not summary["unfinished"]:
                first = next((r["error"] for r in summary["rows"] if r["error"]), "")
                sys.stderr.write(f"{program()}: error: no trial finished an epoch; {first}\n")
            return 0 if summary["best"] is not None and not summary["unfinished"] else 1
        if args.resume or args.params_file:
            raise UsageError("--params_file and --resume go with --tune")
        if args.checkpoint and args.resume_from:
            raise UsageError("--checkpoint evaluates a saved model, --resume_from trains on: one")
        if args.resume_from and distributed:
            raise UsageError("--resume_from continues a run in one process: drop --nproc")
        if args.checkpoint:
            result = evaluate_checkpoint(args.checkpoint, overrides, trust=args.trust_checkpoint)
        elif args.resume_from:
            result = resume(args.resume_from, overrides)
        else:
            result = run(
                args.model,
                args.dataset,
                config_file_list=files,
                config_dict=overrides,
                nproc=args.nproc,
                world_size=args.world_size,
                ip=args.ip,
                port=args.port,
                group_offset=args.group_offset,
            )
            if result is None:  # a node without global rank 0
                print(
                    f"ranks {args.group_offset}..{args.group_offset + args.nproc - 1} "
                    "finished; the results are printed by the node with --group_offset=0"
                )
                return 0
    except TrainingInterrupted as stop:
        sys.stderr.write(interrupted_line(stop))
        return 130
    except KeyboardInterrupt:
        sys.stderr.write(f"{program()}: interrupted\n")
        return 130
    except (UsageError, FileNotFoundError) as err:
        sys.stderr.write(f"{program()}: error: {err}\n")
        return 2
    except ValueError as err:
        # Impossible configurations detected by the models (e.g. hidden_size vs n_heads).
        if os.environ.get("RECBOLE_HYDRA_DEBUG"):
            raise
        sys.stderr.write(f"{program()}: error: {err}\n")
        return 2
    print_results(result)
    return 0
