"""run_hydra.py: bad input ends in one clear line on stderr and exit status 2, which names the
program that ran (run_hydra.py, recbole-hydra or python -m recbole_hydra)."""

import subprocess
import sys
from pathlib import Path

import pytest

import run_hydra
from tests.conftest import random_sequences, write_inter

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
        (
            [
                "--dataset=toy",
                "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
                "--topk=[5,50]",
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
    with pytest.raises(SystemExit) as exit_info:
        run_hydra.main(["--epochs"])
    assert exit_info.value.code == 2
