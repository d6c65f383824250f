"""``attnviz export``: one explorer as one self-contained page, and clear refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision

import attnviz.app
from attnviz import cli, shipped
from attnviz.cli import main
from attnviz.photos import prepare, sample_path, sample_photos
from attnviz.widgets import QueryExplorer
from attnviz.zoo import Pretrained

#: a src or href that reaches outside the page (http, https or protocol-relative)
_REMOTE = re.compile(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _export(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["export", *argv])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def _page(path: Path, out: str) -> dict:
    """Check the page is self-contained and as large as printed; return its data."""
    text = path.read_text(encoding="utf-8")
    assert not _REMOTE.search(text) and "<link" not in text
    assert "http-equiv='Content-Security-Policy'" in text and "default-src 'none'" in text
    wrote = re.search(r"^wrote (.+) \(([\d.]+) MiB, ([\d.]+) s\)$", out, re.MULTILINE)
    assert wrote, out
    assert Path(wrote[1]) == path
    assert abs(float(wrote[2]) - path.stat().st_size / 2**20) <= 0.005 + 1e-9
    data = re.search(r"<script id='attnviz-data' type='application/json'>(.*?)</script>", text)
    assert data
    return json.loads(data[1])


def _tree_sizes(node: dict) -> list:
    """The option counts of a frames page's tree, nested as the controls are."""
    if "control" not in node:
        return []
    return [node["control"], len(node["options"]), [_tree_sizes(c) for c in node["children"]]]


@pytest.mark.slow  # 240 frames of PNGs at zlib level 9: about 30 s
def test_channels_page_holds_every_channel_of_every_block(tmp_path, capsys):
    out = tmp_path / "pages" / "channels.html"
    code, _, err = _export(capsys, "channels", "--images", "1", "--out", str(out))
    assert code == 2 and "no folder" in err  # as overlay and stats, export makes no folders
    out.parent.mkdir()
    code, printed, err = _export(capsys, "channels", "--images", "1", "--out", str(out))
    assert code == 0, err
    data = _page(out, printed)
    sizes = _tree_sizes(data["tree"])
    assert sizes[:2] == ["image", 1]
    blocks = sizes[2][0]
    assert blocks[:2] == ["block", 4]
    assert [s[:2] for s in blocks[2]] == [["channel", c] for c in (16, 32, 64, 128)]
    assert data["panels"] == ["bars", "before", "after"]


def test_nonlocal_page_packs_the_rows_of_each_image(tmp_path, capsys):
    out = tmp_path / "nonlocal.html"
    code, printed, err = _export(capsys, "nonlocal", "--images", "1", "--out", str(out))
    assert code == 0, err
    data = _page(out, printed)
    assert len(data["images"]) == 1 and data["images"][0]["data"]
    assert [b["name"] for b in data["images"][0]["meta"]["blocks"]]


def test_stn_page_steps_through_snapshots_and_the_first_images(tmp_path, capsys):
    out = tmp_path / "stn.html"
    code, printed, err = _export(capsys, "stn", "--images", "2", "--out", str(out))
    assert code == 0, err
    sizes = _tree_sizes(_page(out, printed)["tree"])
    epochs = len(shipped.history("stcnn_rts").snapshot("stn"))
    assert sizes[:2] == ["snapshot", epochs]
    assert all(s[:2] == ["image", 2] for s in sizes[2])


# -- vit: a small torchvision ViT through the CLI's seam, the real one below (slow) ----------
def _small_vit() -> torch.nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=224, patch_size=32, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()


@pytest.fixture
def small_vit(monkeypatch):
    """``attnviz export vit`` on a 2-block ViT (the same torchvision class, 224 input)."""
    transforms = torchvision.models.ViT_B_16_Weights.DEFAULT.transforms()

    def network() -> Pretrained:
        return Pretrained(_small_vit(), None, transforms, [], cli.VIT_MODEL, False)

    monkeypatch.setattr(cli.export, "_vit_network", network)
    return transforms


def _rows(data: dict) -> list[str]:
    return [image["data"] for image in data["images"]]


def test_vit_checkpoint_weights_are_the_ones_exported(tmp_path, capsys, small_vit):
    torch.manual_seed(1)
    trained = _small_vit()
    checkpoint = tmp_path / "vit.pt"
    torch.save(trained.state_dict(), checkpoint)

    torch.manual_seed(0)
    code, printed, err = _export(capsys, "vit", "--out", str(tmp_path / "random.html"))
    assert code == 0, err
    assert "RANDOM WEIGHTS" in printed
    random = _page(tmp_path / "random.html", printed)

    torch.manual_seed(0)  # the same seed: only the checkpoint can change the rows
    out = tmp_path / "checkpoint.html"
    code, printed, err = _export(capsys, "vit", "--checkpoint", str(checkpoint), "--out", str(out))
    assert code == 0, err
    assert "RANDOM" not in printed
    loaded = _page(out, printed)
    assert len(_rows(loaded)) == 1 and _rows(loaded) != _rows(random)

    # the rows are those of the checkpoint's network on the first sample photo
    x = prepare(sample_path(sample_photos()[0]), small_vit)
    direct = QueryExplorer(trained, x, mean=small_vit.mean, std=small_vit.std)
    html = direct.export_html(None).html
    expected = json.loads(re.search(r"type='application/json'>(.*?)</script>", html)[1])
    assert _rows(loaded) == _rows(expected)
    assert loaded["images"][0]["photo"] == expected["images"][0]["photo"]


@pytest.mark.slow  # torchvision's vit_b_16 (86 M parameters), built twice: about 15 s
def test_vit_b_16_from_a_state_dict_file(tmp_path, capsys):
    torch.manual_seed(1)
    checkpoint = tmp_path / "vit_b_16.pt"
    torch.save(torchvision.models.vit_b_16(weights=None).state_dict(), checkpoint)
    out = tmp_path / "vit.html"
    code, printed, err = _export(capsys, "vit", "--checkpoint", str(checkpoint), "--out", str(out))
    assert code == 0, err
    data = _page(out, printed)
    assert len(data["images"]) == 1
    assert len(data["images"][0]["meta"]["blocks"]) == 12  # every encoder block
    assert out.stat().st_size <= 10 * 10**6  # the default budget


# -- refusals -----------------------------------------------------------------------------------
@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a model is built: these arguments are refused before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built for arguments that should be refused")

    monkeypatch.setattr(attnviz.app, "make_explorer", refuse)
    monkeypatch.setattr(cli.export, "_vit_network", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["resnet", "--out", "p.html"], "WHAT is one of stn, channels, nonlocal, vit"),
        (["channels", "--out", "p.png"], "give a file name ending in .html"),
        (["nonlocal", "--out", "p.html", "--images", "0"], "--images must be at least 1"),
        (["stn", "--out", "p.html", "--max-mb", "0"], "--max-mb must be a positive number"),
        (["vit", "--out", "p.html", "--checkpoint", "missing.pt"], "torch.save(model.state_dict()"),
        (["vit", "--out", "p.html", "--images", "99"], f"give {len(sample_photos())} or fewer"),
        (["channels", "--out", "p.html", "--checkpoint", "w.pt"], "--checkpoint is for vit"),
        (["vit", "--out", "p.html", "--folder", "models"], "leave it out"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    tmp_path, capsys, monkeypatch, nothing_built, argv, message
):
    monkeypatch.chdir(tmp_path)
    code, printed, err = _export(capsys, *argv)
    assert code == 2 and printed == ""
    assert message in err and err.startswith("attnviz export: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_does_not_fit_or_is_no_state_dict(tmp_path, capsys, small_vit):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), wrong)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    out = tmp_path / "vit.html"
    for path, message in [
        (wrong, "does not fit vit_b_16; nothing was loaded"),
        (text, "not a PyTorch file"),
    ]:
        code, _, err = _export(capsys, "vit", "--checkpoint", str(path), "--out", str(out))
        assert code == 2 and message in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_models_and_a_page_over_budget(tmp_path, capsys, small_vit):
    out = tmp_path / "p.html"
    code, _, err = _export(capsys, "nonlocal", "--folder", str(tmp_path), "--out", str(out))
    assert code == 2 and "attnviz models --regenerate" in err and "Traceback" not in err
    code, _, err = _export(capsys, "vit", "--max-mb", "0.1", "--out", str(out))
    assert code == 2 and "leaves no room" in err and "--max-mb" in err
    assert err.count("\n") == 1 and not out.exists()
