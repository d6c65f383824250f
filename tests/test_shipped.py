"""The trained models attnviz ships: checksums, strict weights_only loading, and the
manifest's accuracy and attention scores reproduced on the shipped test split."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from attnviz import cli, shipped, storage
from attnviz._resources import models_dir
from attnviz.train import History, PhasedHistory


def test_the_manifest_lists_every_recipe_with_its_provenance():
    data = shipped.manifest()
    assert data["format"] == shipped.FORMAT and data["command"] == "attnviz models --regenerate"
    assert list(data["models"]) == shipped.names()
    for name, e in data["models"].items():
        recipe = shipped.RECIPES[name]
        assert e["file"] == f"{name}.pt" and e["dtype"] == "float16"
        assert e["epochs"] == recipe.epochs and e["data_seed"] == recipe.seed == 0
        assert e["recipe"]["train"]["arguments"] == recipe.train[1]
        assert e["recipe"]["model"]["constructor"] == f"attnviz.models.{recipe.model[0]}"
        assert e["recipe"] == recipe.describe()  # every argument, the data and its sizes
        assert e["torch"] and e["attnviz"] and e["trained_on"]
        assert e["test_correct"] == round(e["test_accuracy"] * e["test_images"])
        # float16 storage costs at most half a point of accuracy (the manifest states both)
        assert abs(e["test_accuracy"] - e["test_accuracy_float32"]) <= 0.005
        assert e["bytes"] < 1_000_000, "shipped models stay small"


@pytest.mark.parametrize("name", shipped.names())
def test_file_matches_its_checksum_and_loads_with_weights_only(name):
    e = shipped.entry(name)
    path = models_dir() / e["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"]
    state = torch.load(path, weights_only=True, map_location="cpu")
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    model = shipped.build(name)
    model.load_state_dict(state["model"], strict=True)  # every key, every shape


@pytest.mark.parametrize("name", shipped.names())
def test_reproduces_the_manifest_accuracy_and_scores(name):
    v = shipped.verify(name)
    e = v.manifest
    # evaluation is deterministic on the CPU: the same images right, not merely the same rate
    assert v.measured["test_correct"] == e["test_correct"], (v.measured, e)
    assert v.measured["test_images"] == e["test_images"]
    assert cli._close(v.measured["scores"], e["scores"]), (v.measured["scores"], e["scores"])
    assert v.accuracy_matches


def test_the_notebooks_figures_are_in_the_manifest():
    scores = {name: shipped.entry(name)["scores"] for name in shipped.names()}
    cbam = scores["resnet10_cbam"]["cbam_maps"]
    best = shipped.best_cbam_block()
    assert all(cbam[best]["energy"] >= row["energy"] for row in cbam.values())
    assert f"Ms of {best} points" in shipped.summary(["resnet10_cbam"])
    assert len(cbam) == 4 and all(
        set(r) >= {"pointing_game", "pointing_game_4px", "energy", "mask_iou"}
        for r in cbam.values()
    )
    assert {"translation_corr", "zoom_corr", "rotation_corr"} <= set(scores["stcnn_rts"])
    assert 0 < scores["stcnn_clutter"]["sampled_iou"] <= 1
    assert scores["resnet10_nonlocal"]["on_object_ratio"] > 0
    assert len(scores["resnet10_se"]["class_specificity"]) == 4


def test_histories_replay_training():
    h = shipped.history("stcnn_rts")
    assert isinstance(h, History) and len(h.epochs) == 31  # epoch 0 = untrained
    assert h.snapshot("stn").shape == (31, 16, 2, 3) and h.snapshot("predictions").shape == (31, 16)
    up = shipped.history("stcnn_upright")
    assert isinstance(up, PhasedHistory) and list(up.phases) == [
        "classifier",
        "transformer",
        "joint",
    ]
    assert h.final.test_acc == pytest.approx(shipped.entry("stcnn_rts")["test_accuracy_float32"])


def _copy(tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(models_dir(), folder)
    return folder


def test_a_changed_file_is_refused_with_the_fix(tmp_path):
    folder = _copy(tmp_path)
    path = folder / "tinycnn_rts.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its manifest.*regenerate --only tinycnn"):
        shipped.load("tinycnn_rts", folder=folder)


class _Runs:
    """Unpickling this calls print: only a loader with weights_only=False would do it."""

    def __reduce__(self):
        return (print, ("unpickled an arbitrary object",))


def test_a_file_with_pickled_objects_is_refused_even_when_its_checksum_fits(tmp_path, capsys):
    """The checksum says the file is the one the manifest names; weights_only loading is what
    keeps a manifest and file swapped together from running code."""
    folder = _copy(tmp_path)
    path = folder / "tinycnn_rts.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "extra": _Runs()}, path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"]["tinycnn_rts"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for read in (shipped.load, shipped.history):
        with pytest.raises(storage.UnsafeFileError, match="refuses to load"):
            read("tinycnn_rts", folder=folder)
    assert "unpickled" not in capsys.readouterr().out


def test_accuracy_matches_means_the_same_number_of_correct_images():
    v = shipped.Verification("x", {"test_correct": 1835}, {"test_correct": 1835})
    assert v.accuracy_matches
    for off in (-1, 1):  # one image either way is a different model, not rounding
        assert not shipped.Verification(
            "x", {"test_correct": 1835}, {"test_correct": 1835 + off}
        ).accuracy_matches


def test_missing_models_and_names_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="attnviz models --regenerate"):
        shipped.load("resnet10_se", folder=tmp_path)
    with pytest.raises(KeyError, match="the shipped models are stcnn_rts"):
        shipped.load("resnet50")
    folder = _copy(tmp_path)
    (folder / "resnet10_se.pt").unlink()
    with pytest.raises(FileNotFoundError, match="resnet10_se.pt is missing"):
        shipped.load("resnet10_se", folder=folder)


def test_regenerate_writes_what_it_measures(tmp_path, monkeypatch):
    """One short recipe end to end: trained, saved in float16, measured from the file."""
    quick = dataclasses.replace(
        shipped.RECIPES["tinycnn_rts"], train=("fit", {"epochs": 1, "lr": 3e-3})
    )
    monkeypatch.setitem(shipped.RECIPES, "tinycnn_rts", quick)
    logs = []
    data = shipped.regenerate(["tinycnn_rts"], out=tmp_path, device="cpu", log=logs.append)
    assert list(data["models"]) == ["tinycnn_rts"] and "tinycnn_rts" in logs[0]
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == data
    v = shipped.verify("tinycnn_rts", folder=tmp_path)
    assert (
        v.accuracy_matches
        and v.measured["test_accuracy"] == data["models"]["tinycnn_rts"]["test_accuracy"]
    )
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_cli_lists_and_checks(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(f"`{name}`" in out for name in shipped.names())
    assert cli.main(["models", "--check", "--only", "tinycnn_rts"]) == 0
    assert "tinycnn_rts: sha256 ok" in capsys.readouterr().out
    assert cli.main(["models", "--only", "nope"]) == 2


def test_the_readme_table_is_the_manifest():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert shipped.summary() in readme, "README's shipped-models table: paste `attnviz models`"
