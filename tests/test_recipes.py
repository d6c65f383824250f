"""One home for recipes: the notebooks, the manifest, regeneration and the benchmarks read the
same Recipe objects, so changing one recipe changes what every reader trains or records."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from attnviz import recipes, shipped
from attnviz.models import small_resnet

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their _common
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


@pytest.fixture
def tiny_plain(monkeypatch):
    """resnet10_plain's recipe changed in a copy: width 4, one epoch, 64 / 32 images."""
    changed = recipes.RECIPES["resnet10_plain"].variant(
        model={"width": 4}, train={"epochs": 1}, n_train=64, n_test=32
    )
    monkeypatch.setitem(recipes.RECIPES, "resnet10_plain", changed)
    return changed


def _width(model: torch.nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).out_channels


def test_shipped_reads_the_recipes_module():
    assert shipped.RECIPES is recipes.RECIPES and shipped.Recipe is recipes.Recipe
    assert shipped.names() == recipes.names() == list(recipes.RECIPES)


def test_obtain_trains_by_a_changed_recipe(tiny_plain):
    model, history = shipped.obtain(
        "resnet10_plain", train=True, seed=0, device="cpu", progress=False
    )
    assert _width(model) == 4 and not model.training
    assert [e.epoch for e in history.epochs] == [0, 1]
    assert len(shipped.test_data("resnet10_plain", train=True)) == 32
    # the quick form of the changed recipe keeps its smaller sizes and one epoch
    assert tiny_plain.quick().n_train == 64 and tiny_plain.quick().epochs == 1


def test_regeneration_and_the_manifest_follow_a_changed_recipe(tiny_plain, tmp_path):
    data = shipped.regenerate(["resnet10_plain"], out=tmp_path, device="cpu", log=lambda _: None)
    e = data["models"]["resnet10_plain"]
    assert e["recipe"] == tiny_plain.describe()
    assert e["recipe"]["model"]["arguments"]["width"] == 4
    assert e["recipe"]["images"] == {"train": 64, "test": 32} and e["epochs"] == 1
    assert e["test_images"] == 32
    model = shipped.load("resnet10_plain", folder=tmp_path)  # built by the changed recipe
    assert _width(model) == 4
    assert json.loads((tmp_path / "manifest.json").read_text()) == data
    assert "| 1 |" in shipped.summary(["resnet10_plain"], folder=tmp_path)  # epochs column


def test_the_benchmarks_train_the_recipes(tiny_plain):
    cbam = _bench("bench_cbam").models()
    assert cbam["plain"] is tiny_plain and cbam["+CBAM"] is recipes.RECIPES["resnet10_cbam"]
    assert cbam["+CBAM 7x7"].model[1]["attention_kwargs"] == {"spatial_kernel": 7}
    assert cbam["+CBAM 7x7"].train == recipes.RECIPES["resnet10_cbam"].train
    quick = _bench("bench_cbam").models(quick=True)
    assert quick["plain"].model[1]["width"] == 4 and quick["plain"].epochs == 1


def test_the_manifest_records_each_recipe_exactly():
    for name, recipe in recipes.RECIPES.items():
        assert shipped.entry(name)["recipe"] == recipe.describe(), name


def _calls(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            names.append(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0[12356]_*.py")))
def test_notebooks_get_every_shipped_model_through_obtain(path):
    """A notebook that opens shipped models trains none by hand: each comes from
    obtain(name, ...), which trains by the recipe or opens the file the recipe made."""
    tree = ast.parse(path.read_text())
    calls = _calls(tree)
    by_hand = {"fit", "fit_upright", "small_resnet", "for_rts", "for_clutter", "for_upright"}
    assert not by_hand & set(calls), f"{path.name} trains by hand: {by_hand & set(calls)}"
    obtained = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "obtain"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    # names passed through a dict of names count too
    obtained |= {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in recipes.RECIPES
    }
    wanted = {n for n, r in recipes.RECIPES.items() if path.stem in r.notebooks}
    assert wanted and wanted <= obtained, (path.name, wanted - obtained)
    assert "obtain" in calls


def test_recipes_build_the_networks_the_notebooks_used_to_spell_out():
    torch.manual_seed(0)
    kwargs = {"spatial_kernel": 3, "spatial_batch_norm": True, "reduction": 4}
    by_hand = small_resnet(10, attention="cbam", width=16, stem_stride=2, attention_kwargs=kwargs)
    built = recipes.get("resnet10_cbam").build()
    assert by_hand.state_dict().keys() == built.state_dict().keys()
    assert all(torch.equal(v, built.state_dict()[k]) for k, v in by_hand.state_dict().items())


def test_input_shape_is_that_of_the_data_each_recipe_generates():
    for name in recipes.names():
        recipe = recipes.get(name)
        images = recipe.quick().test_data().images
        assert tuple(images.shape[1:]) == recipe.input_shape, name


def test_quick_and_variants():
    up = recipes.get("stcnn_upright").quick()
    assert up.train[1] == {"pre_epochs": 1, "stn_epochs": 1, "joint_epochs": 1} and up.epochs == 3
    photos = recipes.get("resnet10_se").quick()
    assert (photos.n_train, photos.n_test, photos.epochs) == (2000, 500, 1)
    assert recipes.get("resnet10_se").epochs == 6  # the original is unchanged
    longer = recipes.get("resnet10_se").variant(train={"epochs": 12})
    assert longer.epochs == 12 and longer.train[1]["lr"] == 3e-3


def test_fresh_photos_are_new_images_of_the_same_digits_every_epoch():
    vit = recipes.get("vit_small")
    assert (
        vit.describe()["fresh"] is True and vit.describe()["model"]["arguments"]["stem"] == "conv"
    )
    quick = vit.quick()
    assert quick.fresh and quick.n_train == 2000
    data = quick.variant(n_train=8).train_data()
    a, b = data(1), data(2)
    assert not torch.equal(a.images, b.images)  # new crops, places and colours
    assert torch.equal(data(1).images, a.images)  # seeded: the same epoch, the same images
    assert torch.equal(
        quick.test_data().images, recipes.get("resnet10_se").quick().test_data().images
    )
    with pytest.raises(ValueError, match="photos data only"):
        recipes.get("stcnn_rts").variant(fresh=True)


def test_bad_recipes_and_names_say_what_to_do():
    with pytest.raises(KeyError, match="the shipped models are stcnn_rts"):
        recipes.get("resnet99")
    with pytest.raises(ValueError, match="unknown constructor 'resnet99'"):
        recipes.get("resnet10_se").variant().__class__(
            "t", (), ("resnet99", {}), "photos", ("fit", {"epochs": 1})
        )
    with pytest.raises(ValueError, match="unknown data 'imagenet'"):
        recipes.get("resnet10_se").variant(data="imagenet")
    with pytest.raises(ValueError, match="pass train=True"):
        shipped.obtain("resnet10_se", seed=1)


def test_obtain_without_training_opens_the_shipped_file():
    model, history = shipped.obtain("resnet10_se", device="cpu")
    reference = shipped.load("resnet10_se")
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert history.final.test_acc == shipped.history("resnet10_se").final.test_acc
    # quick does not apply to the shipped file
    again, _ = shipped.obtain("resnet10_se", quick=True, device="cpu")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
