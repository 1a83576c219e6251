"""run_hydra.py: bad input ends in one clear line on stderr and exit status 2, which names the
program that ran (run_hydra.py, recbole-hydra or python -m recbole_hydra)."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from recbole.utils import init_seed

import run_hydra
from recbole_hydra.config import PROPERTIES, check_dataset, make_config
from recbole_hydra.errors import UsageError
from recbole_hydra.registry import PLUGIN_MODELS, create_dataset
from tests.conftest import quiet_config, random_sequences, write_domains, write_inter

REPO = Path(__file__).resolve().parent.parent


def run_main(capsys, *argv):
    code = run_hydra.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_unknown_model_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_hydra.py"), "--model=NoSuchModel"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [errors[0]] and "unknown model 'NoSuchModel'" in errors[0]
    assert errors[0].startswith("run_hydra.py: error: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv0,prog,command",
    [
        ("/venv/bin/recbole-hydra", "recbole-hydra", "recbole-hydra"),
        ("/site/recbole_hydra/__main__.py", "python -m recbole_hydra", "python -m recbole_hydra"),
        ("run_hydra.py", "run_hydra.py", "python run_hydra.py"),
        ("../repo/run_hydra.py", "run_hydra.py", "python run_hydra.py"),
    ],
)
def test_messages_name_the_program_that_ran(monkeypatch, capsys, argv0, prog, command):
    from recbole_hydra import errors

    monkeypatch.setattr(sys, "argv", [argv0])
    assert errors.program() == prog and errors.command() == command
    with pytest.raises(SystemExit):
        run_hydra.main(["--help"])
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {prog} ") and f"    {command} --model=SASRec" in shown
    code, err = run_main(capsys, "--checkpoint=none.pth")
    assert code == 2 and err == [f"{prog}: error: checkpoint none.pth does not exist"]


@pytest.fixture
def toy(tmp_path):
    return write_inter(tmp_path / "data", "toy", random_sequences(10, 20, 4, 8))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset=nowhere"], "has no atomic files: RecBole looks for"),
        (["--dataset=toy", "--hidden_size=30", "--n_heads=4"], "not divisible by n_heads"),
        (["--dataset=toy", "--MAX_ITEM_LIST_LENGTH=0"], "MAX_ITEM_LIST_LENGTH must be >= 1"),
        (
            ["--dataset=toy", "--config_files=missing.yaml"],
            "config file missing.yaml does not exist",
        ),
        (["--checkpoint=saved/none.pth"], "checkpoint saved/none.pth does not exist"),
        (["--dataset=toy", "--n_heads=0"], "n_heads must be a positive integer, got 0"),
        (["--dataset=toy", "--n_heads=-2"], "n_heads must be a positive integer, got -2"),
        (["--dataset=toy", "--hidden_size=0"], "hidden_size must be a positive integer"),
        (["--dataset=toy", "--chunk_size=0"], "chunk_size must be a positive integer"),
        (["--dataset=toy"], "the split orders interactions by time, but load_col loads only"),
        (["--dataset=toy", "--epochs=0"], "epochs must be a positive integer, got 0"),
        (["--dataset=toy", "--epochs=1", "--epochs=2"], "--epochs is given twice: give it once"),
        (["--dataset=toy", "--model=Hydra", "-m", "SASRec"], "--model is given twice"),
        (["--dataset=toy", "--dataset=toy"], "--dataset is given twice"),
        (["--dataset=toy", "--mod=SASRec"], "--mod is not a flag: give it in full (--model)"),
        (["--dataset=toy", "--res=x.pth"], "--res is not a flag: give it in full (--resume_from,"),
        (
            ["--dataset=toy", "--topk=[5]", "--valid_metric=NDCG@10"],
            "valid_metric NDCG@10 ranks the top k items, but its cut-off 10 is not in topk [5]: "
            "add 10 to topk, or set e.g. --valid_metric=NDCG@5",
        ),
        (
            ["--dataset=toy", "--valid_metric=MRR@10"],
            "valid_metric MRR@10 is not among metrics ['Recall', 'NDCG']: add MRR to metrics",
        ),
        (["--dataset=toy", "--valid_metric=NDCG"], "but it has no @cut-off: set e.g."),
        (
            ["--dataset=toy", "--metrics=['Recall', 'NDGC']"],
            "unknown metric 'NDGC' in metrics: did you mean ndcg? RecBole's are auc,",
        ),
        (
            ["--dataset=toy", "--metrics=['RMSE']", "--valid_metric=RMSE"],
            "metrics mixes value metrics (RMSE, MAE, AUC, LogLoss ...) with full-ranking",
        ),
        (
            [
                "--dataset=toy",
                "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
                "--topk=[5,50]",
                "--valid_metric=NDCG@5",
            ],
            "topk [50] asks for more items than toy has (",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, toy, argv, message):
    code, err = run_main(
        capsys, f"--data_path={toy}", "--show_progress=False", "--state=ERROR", *argv
    )
    assert code == 2
    assert len(err) == 1 and message in err[0], err


def test_dataset_without_timestamp(capsys, tmp_path):
    root = write_inter(tmp_path / "data", "notime", random_sequences(5, 10, 3, 5), with_time=False)
    code, err = run_main(capsys, "--dataset=notime", f"--data_path={root}")
    assert code == 2 and len(err) == 1 and "no 'timestamp' column" in err[0]


def test_overrides_must_be_key_value(capsys):
    code, err = run_main(capsys, "--epochs")
    assert code == 2 and len(err) == 1 and "config overrides look like --key=value" in err[0]


# -- atomic files ----------------------------------------------------------------------------------
HEADER = "user_id:token\titem_id:token\ttimestamp:float"
LOAD_TIME = "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"
TINY = [
    "--topk=[3]",
    "--valid_metric=NDCG@3",
    "--num_negatives=4",
    "--user_inter_num_interval=[0,inf)",
    "--item_inter_num_interval=[0,inf)",
]


def rows(n_users=6, per_user=5):
    """Lines 2.. of a tab-separated .inter: user u's t-th interaction at time 100 * u + t."""
    return [f"u{u}\ti{(u + t) % 9}\t{100 * u + t}" for u in range(n_users) for t in range(per_user)]


def replaced(lines, changes):
    """``lines`` with file line ``n`` (1-based, the header is line 1) replaced by ``changes[n]``."""
    return [changes.get(i + 2, line) for i, line in enumerate(lines)]


def write_files(root, name, inter, item=None):
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_bytes(inter.encode())
    if item is not None:
        (folder / f"{name}.item").write_text(item)
    return str(root)


GOOD = "\n".join([HEADER] + rows()) + "\n"

BAD_FILES = {
    # a: a token time orders the split by token id
    "token_time": (
        GOOD.replace("timestamp:float", "timestamp:token"),
        "declares timestamp:token, but the time field must be float (the split orders "
        "interactions by it; a token orders them by token id): write timestamp:float",
    ),
    # b: rows RecBole would fill with NaN, or misread
    "short_rows": (
        "\n".join([HEADER] + replaced(rows(), {4: "u0\ti3", 9: "u1\ti4", 12: "u2"})) + "\n",
        "3 rows do not have 3 fields (lines 4, 9, 12): fix or remove them",
    ),
    "long_rows": (
        "\n".join([HEADER] + replaced(rows(), {5: "u0\ti3\t4\t5"})) + "\n",
        "1 row has 4 fields instead of 3 (line 5): fix or remove them",
    ),
    "missing_ids": (
        "\n".join([HEADER] + replaced(rows(), {3: "u0\t\t3", 7: "u1\tNA\t7"})) + "\n",
        "2 rows have an empty or missing (NaN, NA, null, ...) item_id (lines 3, 7)",
    ),
    "missing_time": (
        "\n".join([HEADER] + replaced(rows(), {6: "u1\ti2\tnan"})) + "\n",
        "1 row has an empty or missing (NaN, NA, null, ...) timestamp (line 6)",
    ),
    "text_time": (
        "\n".join([HEADER] + replaced(rows(), {8: "u1\ti2\tyesterday"})) + "\n",
        "1 row has a timestamp that is not a number (line 8): fix or remove them",
    ),
    # j, k, l, m: refused by RecBole too, but without saying what to write
    "empty": (
        "",
        "empty.inter is empty: it needs a header line (user_id:token item_id:token "
        "timestamp:float, separated by '\\t') and rows",
    ),
    "header_only": (HEADER + "\n", "header_only.inter has a header but no rows"),
    "untyped": (
        GOOD.replace(":token", "").replace(":float", ""),
        "(user_id item_id timestamp) has columns without a type: RecBole's atomic-file headers "
        "are name:type (token, float, token_seq, float_seq), e.g. user_id:token item_id:token "
        "timestamp:float",
    ),
    "unknown_type": (
        GOOD.replace("timestamp:float", "timestamp:int"),
        "has type 'int', which RecBole does not know: write timestamp:float",
    ),
    "float_id": (
        GOOD.replace("item_id:token", "item_id:float"),
        "declares item_id:float, but id columns must be token (RecBole maps their values to "
        "ids): write item_id:token in its header",
    ),
    "commas": (
        GOOD.replace("\t", ","),
        "has one column for field_separator '\\t', but holds ',': separate its fields with",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_inter_file_is_one_line_and_exit_2(capsys, tmp_path, name):
    text, message = BAD_FILES[name]
    root = write_files(tmp_path / "data", name, text)
    code, err = run_main(
        capsys, f"--dataset={name}", f"--data_path={root}", "--state=ERROR", LOAD_TIME, *TINY
    )
    assert code == 2
    assert len(err) == 1 and message in err[0], err


def test_bad_item_file_is_one_line_and_exit_2(capsys, tmp_path):
    item = "item_id:token\ttitle:token\n" + "\n".join(f"i{i}\tTitle {i}" for i in range(9))
    root = write_files(tmp_path / "data", "toy", GOOD, item.replace("i4\tTitle 4", "i4") + "\n")
    load_col = "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id']}"
    code, err = run_main(capsys, "--dataset=toy", f"--data_path={root}", load_col, *TINY)
    assert code == 2 and len(err) == 1, err
    assert "toy.item: 1 row has 1 field instead of 2 (line 6): fix or remove them" in err[0]


@pytest.mark.parametrize("per_user", [1, 2, 3])
def test_users_too_short_for_leave_one_out(capsys, tmp_path, per_user):
    """n: a user with n interactions has n - 1 examples; the last goes to test, the one before to
    valid, never the only one: 3 interactions give no valid example, 4 do."""
    name = f"short{per_user}"
    root = write_files(tmp_path / "data", name, "\n".join([HEADER] + rows(8, per_user)) + "\n")
    argv = [f"--dataset={name}", f"--data_path={root}", "--state=ERROR", LOAD_TIME, *TINY]
    code, err = run_main(capsys, *argv)
    assert code == 2 and len(err) == 1, err
    assert (
        f"{name}: leave-one-out needs users with >= 4 interactions (a train, a valid and a test "
        f"example each), but none of its 8 users has more than {per_user}: add interactions"
    ) in err[0]


def loaded(root, name, model="Hydra", **overrides):
    config = make_config(model, name, config_dict=quiet_config(root, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    return config, create_dataset(config)


def test_num_negatives_above_the_item_count(tmp_path):
    root = write_files(tmp_path / "data", "toy", GOOD)
    config, dataset = loaded(root, "toy", topk=[3], valid_metric="NDCG@3", num_negatives=9)
    check_dataset(config, dataset)  # 9 items, 9 negatives: fine
    config["num_negatives"] = 10
    with pytest.raises(UsageError, match=r"num_negatives \(10\) is more than the 9 items of toy"):
        check_dataset(config, dataset)
    config["loss_type"] = "CE"  # no negatives drawn
    check_dataset(config, dataset)


def test_few_test_users_is_a_warning(tmp_path, caplog):
    root = write_files(tmp_path / "data", "one", "\n".join([HEADER] + rows(1, 12)) + "\n")
    config, dataset = loaded(root, "one", topk=[3], valid_metric="NDCG@3", num_negatives=4)
    with caplog.at_level(logging.WARNING):
        check_dataset(config, dataset)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "one: only 1 of its 1 users have a test example: metrics averaged over fewer than 100 "
        "users are not meaningful"
    ]


# -- config files and keys ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,message",
    [
        ("", "is empty (or only comments): write key: value lines in it, or leave it out"),
        ("# only a comment\n", "is empty (or only comments)"),
        ("epochs: 1\n  hidden_size: [8\n", "is not valid yaml: mapping values are not allowed"),
        ("epochs: 1\nhidden_size: [8, 16\n", "is not valid yaml: "),
        ("- epochs\n- 1\n", "holds a list, not key: value lines"),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(capsys, toy, tmp_path, text, message):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    code, err = run_main(capsys, "--dataset=toy", f"--data_path={toy}", f"--config_files={path}")
    assert code == 2 and len(err) == 1, err
    assert f": error: config file {path} " in err[0] and message in err[0]
    if "not valid yaml" in message:
        assert " at line 2, column " in err[0]  # where the problem is, or where it started


def test_config_ignores_the_command_line_of_the_process(toy, monkeypatch):
    """RecBole's Config would read sys.argv itself (and fail on a key given twice)."""
    monkeypatch.setattr(sys, "argv", ["prog", "--hidden_size=8", "--epochs=1", "--epochs=2"])
    config = make_config("Hydra", "toy", config_dict=quiet_config(toy, n_heads=2))
    assert config["hidden_size"] == 64 and config["epochs"] == 1


def unknown_key_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "unknown config key" in r.getMessage()]


def test_misspelt_keys_are_a_warning_naming_the_nearest_key(caplog, toy, tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("learnig_rate: 0.01\nepochs: 1\n")
    overrides = {"hiden_size": 64, "max_item_list_length": 20, "zzqx": 1}
    with caplog.at_level(logging.WARNING):
        make_config("Hydra", "toy", [str(path)], quiet_config(toy, **overrides))
    assert unknown_key_warnings(caplog) == [
        "unknown config key 'hiden_size': neither RecBole nor recbole-hydra reads it, so it "
        "changes nothing; did you mean 'hidden_size'?",
        "unknown config key 'max_item_list_length': neither RecBole nor recbole-hydra reads it, "
        "so it changes nothing; did you mean 'MAX_ITEM_LIST_LENGTH'?",
        "unknown config key 'zzqx': neither RecBole nor recbole-hydra reads it, so it changes "
        "nothing; check its spelling",
        f"unknown config key 'learnig_rate' in {path}: neither RecBole nor recbole-hydra reads "
        "it, so it changes nothing; did you mean 'learning_rate'?",
    ]


def test_misspelt_key_warning_on_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_hydra.py"), "--dataset=nowhere", "--hiden_size=64"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stderr.splitlines() if "hiden_size" in line or "error" in line]
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("unknown config key 'hiden_size'") and "'hidden_size'?" in lines[0]
    assert lines[1].startswith("run_hydra.py: error: dataset 'nowhere' has no atomic files")


@pytest.mark.parametrize("model", sorted(PLUGIN_MODELS) + ["SASRec", "BPR"])
def test_default_configs_warn_about_no_key(caplog, tmp_path, model):
    """Every key of the package's yaml files is known, for each model's default run (HydraMD on
    a dataset with a domain column) and for the package's LLM yaml files."""
    runs = [("ml-100k", None, None)]
    if model == "HydraMD":
        rows_ = [(u, i, t, "ab"[int(i[1:]) % 2]) for u, i, t in random_sequences(6, 10, 4, 6)]
        runs = [("md", None, {"data_path": write_domains(tmp_path / "data", "md", rows_)})]
    if model == "Hydra":
        runs += [("ml-100k", [str(PROPERTIES / "HydraLLM-ml-100k.yaml")], None)]
        runs += [
            ("ml-100k", [str(f)], None)
            for f in sorted(PROPERTIES.glob("HydraLLM-*.yaml"))
            if f.name != "HydraLLM-ml-100k.yaml"
        ]
    for dataset, files, overrides in runs:
        with caplog.at_level(logging.WARNING):
            try:
                make_config(model, dataset, files, overrides)
            except UsageError:
                pass  # e.g. the Amazon LLM yaml without its dataset: the keys were read already
    assert unknown_key_warnings(caplog) == []
