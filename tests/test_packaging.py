"""The package as a wheel installs it: built from a copy of the source, installed into a folder of
its own, and run from an empty directory where the source tree cannot be imported, as
``python -m recbole_hydra`` (one epoch of Hydra) and as the ``recbole-hydra`` console script."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from recbole_hydra.layers import kernels
from tests.conftest import ml100k_slice

REPO = Path(__file__).resolve().parent.parent
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
#: what a build reads: the package and its metadata (a copy, so that the checkout's build/ and
#: egg-info are neither used nor written); the top-level ``properties`` link comes along
SOURCE = ("pyproject.toml", "setup.cfg", "README.md", "recbole_hydra", "properties")


def copy_source(dest):
    dest.mkdir()
    for name in SOURCE:
        path = REPO / name
        if path.is_symlink():
            os.symlink(os.readlink(path), dest / name)
        elif path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the folder it is installed in) for the tests of this module."""
    root = tmp_path_factory.mktemp("packaging")
    source = copy_source(root / "source")
    wheels = root / "wheels"
    subprocess.run(
        PIP
        + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["-w", str(wheels), str(source)],
        check=True,
    )
    (wheel,) = wheels.glob("recbole_hydra-*.whl")
    site = root / "site"
    subprocess.run(
        PIP + ["install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
    )
    return wheel, site


def run_installed(site, argv, cwd, **env):
    """``argv`` with only ``site`` on PYTHONPATH (the venv still gives recbole, torch...)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(PYTHONPATH=str(site), **env)
    environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
    return subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True)


def test_the_wheel_holds_one_copy_of_the_yaml_and_the_kernel_sources(installed):
    wheel, site = installed
    names = zipfile.ZipFile(wheel).namelist()
    for name in ["Hydra.yaml", "overall.yaml", "dataset/ml-1m.yaml", "tune/hydra.hyper"]:
        assert f"recbole_hydra/properties/{name}" in names
    for name in kernels._SOURCES:
        assert f"recbole_hydra/csrc/{name}" in names
    assert "recbole_hydra/__main__.py" in names
    tops = {name.split("/")[0] for name in names}
    assert tops == {"recbole_hydra", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "recbole-hydra = recbole_hydra.cli:main" in text
    # the checkout's properties/ is a link to the package's; each of its files is installed, once
    assert (REPO / "properties").is_symlink()
    assert (REPO / "properties").resolve() == REPO / "recbole_hydra" / "properties"
    package = REPO / "recbole_hydra"
    shipped = [p.relative_to(package) for p in (package / "properties").rglob("*") if p.is_file()]
    assert len(shipped) > 10 and all((site / "recbole_hydra" / p).is_file() for p in shipped)
    assert all((site / "recbole_hydra" / "csrc" / name).is_file() for name in kernels._SOURCES)
    assert [p.relative_to(site) for p in site.rglob("Hydra.yaml")] == [
        Path("recbole_hydra/properties/Hydra.yaml")
    ]
    assert (site / "bin" / "recbole-hydra").is_file()


def test_python_m_recbole_hydra_trains_hydra_from_the_wheel(installed, tmp_path):
    _, site = installed
    data = ml100k_slice(tmp_path / "data", n_users=20)
    empty = tmp_path / "empty"
    empty.mkdir()
    # the installed copy is the one imported, and it reads its own yaml and kernel sources
    probe = "import recbole_hydra.config as c, recbole_hydra.layers.kernels as k; "
    probe += "print(c.__file__, c.PROPERTIES, k._CSRC)"
    where = run_installed(site, [sys.executable, "-c", probe], empty)
    assert where.returncode == 0, where.stderr
    module, properties, csrc = map(Path, where.stdout.split())
    assert module.is_relative_to(site) and properties == site / "recbole_hydra" / "properties"
    assert csrc == site / "recbole_hydra" / "csrc"
    argv = [
        sys.executable,
        "-m",
        "recbole_hydra",
        "--model=Hydra",
        "--dataset=ml-100k-slice",
        f"--data_path={data}",
        "--load_col={'inter': ['user_id', 'item_id', 'timestamp']}",
        "--show_progress=False",
        "--state=ERROR",
        "--epochs=1",
        "--hidden_size=16",
        "--n_layers=1",
        "--n_heads=2",
        "--d_state=8",
        "--chunk_size=8",
        "--num_negatives=16",
        "--MAX_ITEM_LIST_LENGTH=10",
        f"--checkpoint_dir={tmp_path / 'saved'}",
        # compiling the installed csrc/ would take minutes here; test_cpu_kernels builds them
        "--use_kernels=False",
    ]
    proc = run_installed(site, argv, empty)
    assert proc.returncode == 0, proc.stderr
    assert "| split |" in proc.stdout and "| test |" in proc.stdout, proc.stdout
    assert "checkpoint: " in proc.stdout
    assert "pkg_resources is deprecated" not in proc.stderr

    bad = run_installed(site, [sys.executable, "-m", "recbole_hydra", "--model=Nope"], empty)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("python -m recbole_hydra: error: ")


def test_the_console_script(installed, tmp_path):
    _, site = installed
    script = str(site / "bin" / "recbole-hydra")
    shown = run_installed(site, [script, "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: recbole-hydra ")
    assert "recbole-hydra --model=SASRec" in shown.stdout and "run_hydra.py" not in shown.stdout
    bad = run_installed(site, [script, "--model=NoSuchModel"], tmp_path)
    assert bad.returncode == 2, bad.stderr  # the console script exits with main()'s code
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("recbole-hydra: error: unknown model 'NoSuchModel'"), bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_sdist_holds_one_copy_of_the_yaml(tmp_path):
    source = copy_source(tmp_path / "source")
    out = tmp_path / "sdist"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})",
        ],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (sdist,) = out.glob("recbole_hydra-*.tar.gz")
    names = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
    assert "recbole_hydra/properties/Hydra.yaml" in names
    assert "recbole_hydra/csrc/bindings.cpp" in names
    assert not [n for n in names if n.startswith("properties")], names
