"""The datasets the package knows how to get, and what to tell a user who does not have one.

Only names and paths live here, so that checking a config never imports a converter.
ml-100k ships inside RecBole; ml-1m and ml-1m-domains come from ``recbole_hydra.data.fetch``;
the Amazon Reviews 2023 categories are converted from their raw files by
``recbole_hydra.data.amazon2023``.
"""

from pathlib import Path
from typing import Optional

#: Amazon Reviews 2023 category (as its files are named) -> RecBole dataset name
AMAZON2023_CATEGORIES = {
    "Books": "amazon-books",
    "Movies_and_TV": "amazon-movies-tv",
    "Video_Games": "amazon-video-games",
    "Toys_and_Games": "amazon-toys-games",
}
AMAZON2023_DATASETS = {name: category for category, name in AMAZON2023_CATEGORIES.items()}
AMAZON2023_SITE = "https://amazon-reviews-2023.github.io/"

#: datasets ``python -m recbole_hydra.data.fetch NAME`` writes
FETCHED = ("ml-1m", "ml-1m-domains")


def missing_dataset_hint(dataset: str, data_path: str) -> Optional[str]:
    """What to download and run when RecBole finds no atomic files for ``dataset``.

    ``data_path`` is RecBole's ``config["data_path"]`` (``<--data_path>/<dataset>``). Returns
    None for datasets the package cannot get, or when ``<data_path>/<dataset>.inter`` exists.
    """
    folder = Path(data_path)
    inter = folder / f"{dataset}.inter"
    if inter.is_file():
        return None
    out = folder.parent if folder.name == dataset else folder
    if dataset in FETCHED:
        return (
            f"dataset {dataset!r} is not there yet (RecBole looks for {inter}): run "
            f"python -m recbole_hydra.data.fetch {dataset} --data_path {out}"
        )
    category = AMAZON2023_DATASETS.get(dataset)
    if category is None:
        return None
    raw = out / "raw"
    return (
        f"dataset {dataset!r} is not converted yet (RecBole looks for {inter}): download "
        f"{category}.jsonl.gz and meta_{category}.jsonl.gz (or the rating-only {category}.csv.gz "
        f"with meta_{category}.jsonl.gz) from {AMAZON2023_SITE} into {raw}/, then run: python -m "
        f"recbole_hydra.data.amazon2023 --category {category} --raw {raw} --out {out}"
    )
