"""Every command that reads user data, run on the folder a real user has (tests/messy.py):
mixed sizes and modes, EXIF rotation, corrupt, empty and non-image files, nested class
folders, non-ASCII names, tar shards with a truncated member and a file that is no tar.

Each test is named after a finding of the issue "Real data and a real server" and fails on
the code before it: ``stats`` stacked mixed sizes into a traceback, named no bad file,
accepted ``--top-k 0`` and left ``OUT.parts/`` behind; ``plot --gallery`` showed another
folder's images; the manifest, ``overlay --size``, ``export``'s folders and a list as
resume state gave tracebacks or silent surprises.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from messy import make_messy
from PIL import Image, ImageOps

from attnviz import cli, shipped
from attnviz.capture import capture
from attnviz.photos import load_image
from attnviz.stats import DatasetStats, dataset_stats, input_transform, open_dataset

SE = "shipped:resnet10_se"


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy(tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="module")
def se():
    return shipped.load("resnet10_se")


def _stats(*argv: str) -> int:
    return cli.main(["stats", "--model", SE, "--no-progress", *argv])


# -- attnviz stats on the folders people have --------------------------------------------------
def test_stats_fails_on_an_ordinary_folder_of_mixed_sizes_no_more(messy, tmp_path, capsys):
    """Mixed sizes need no --image-size: every image is resized and centre-cropped to the
    model's input (64 x 64 for the shipped photo models), and the run says so."""
    out = tmp_path / "s.pt"
    assert _stats("--data", str(messy.folder), "--out", str(out), "--skip-bad") == 0
    said = capsys.readouterr().out
    assert "resized and centre-cropped to 64 x 64 (the input of shipped:resnet10_se)" in said
    stats = DatasetStats.load(out)
    assert int(stats.counts.sum()) == len(messy.good)
    assert "Preprocess(crop_size=64, resize_size=64" in stats.meta["transform"]


def test_stats_with_skip_bad_equals_a_brute_force_pass_over_the_good_images(messy, se, tmp_path):
    """Per-class means and variances, top-k (by data set index) and histogram of every SE
    block equal those computed image by image from the good files, each read with Pillow
    and the same preprocessing; the bad files are named in the result and the summary."""
    out = tmp_path / "s.pt"
    argv = ["--data", str(messy.folder), "--out", str(out), "--skip-bad"]
    assert _stats(*argv, "--batch-size", "4", "--shard-size", "8", "--top-k", "3") == 0
    stats = DatasetStats.load(out)
    listed = open_dataset(messy.folder, input_transform(64))
    # the folder lists the good and bad files by extension, never the hidden ones
    assert {Path(p) for p, _ in listed.samples} == set(messy.good) | set(messy.bad)
    assert not {Path(p) for p, _ in listed.samples} & set(messy.ignored)
    good = [(i, Path(p), y) for i, (p, y) in enumerate(listed.samples) if Path(p) in messy.good]
    assert all(messy.good[p] == y for _, p, y in good)
    # brute force: one image at a time (test_stats_reads_modes... checks the reading)
    transform = input_transform(64)
    weights: dict[str, list[torch.Tensor]] = {}
    for _, path, _ in good:
        with torch.no_grad(), capture(se, kinds="channel") as rec:
            se(transform(load_image(path))[None])
        for name, r in rec.items():
            weights.setdefault(name, []).append(r.weights[0].double())
    labels = torch.tensor([y for _, _, y in good])
    index = torch.tensor([i for i, _, _ in good])
    assert stats.counts.tolist() == torch.bincount(labels, minlength=3).tolist()
    channel = stats.channel_stats()
    for name, ws in weights.items():
        w = torch.stack(ws)
        for k in range(3):
            rows = w[labels == k]
            torch.testing.assert_close(channel.mean[name][k], rows.mean(0), rtol=0, atol=1e-6)
            var = rows.var(0, unbiased=False)
            torch.testing.assert_close(channel.var_within[name][k], var, rtol=0, atol=1e-6)
        for c in (0, w.shape[1] - 1):
            order = sorted(range(len(w)), key=lambda j: (-w[j, c].item(), index[j].item()))
            assert stats.top(name, c)[1].tolist() == index[order[:3]].tolist()
        counts, _ = stats.histogram(name)
        assert counts.sum() == w.numel()
        expected = torch.histc(w.flatten(), bins=50, min=0, max=1)
        assert torch.equal(counts.double(), expected.double())
    assert len(stats.skipped) == len(messy.bad)
    for path in messy.bad:
        assert any(str(path) in why for why in stats.skipped), path
    summary = stats.summary()
    assert f"{len(messy.good)} images read; {len(messy.bad)} skipped" in summary
    assert "empty (0 bytes)" in summary and "truncated" in summary


def test_stats_reads_modes_and_exif_as_pil_and_torchvision_do(messy):
    """Grey, RGBA, palette, 1-bit, 16-bit, CMYK and EXIF-rotated images reach the network as
    the RGB a viewer shows: each equals Pillow's own conversion (16-bit by v / 257)."""
    dataset = open_dataset(messy.folder, input_transform(64))
    by_path = {Path(p): i for i, (p, _) in enumerate(dataset.samples)}
    to_tensor = input_transform(64)
    seen = set()
    for path in messy.good:
        with Image.open(path) as raw:
            mode = raw.mode
            upright = ImageOps.exif_transpose(raw)
            if mode == "I;16":
                grey = (np.asarray(upright, np.uint32) + 128) // 257
                expected = Image.fromarray(grey.astype(np.uint8)).convert("RGB")
            elif mode in ("RGBA", "LA") or "transparency" in raw.info:
                rgba = upright.convert("RGBA")
                expected = Image.new("RGB", rgba.size, "white")
                expected.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
            else:
                expected = upright.convert("RGB")
        x, _ = dataset[by_path[path]]
        torch.testing.assert_close(x, to_tensor(expected), rtol=0, atol=0, msg=str(path))
        seen.add(mode)
    assert {"L", "LA", "RGBA", "P", "1", "I;16", "CMYK", "RGB"} <= seen
    # the sideways JPEG is shown upright: 90 x 40, not as stored (40 x 90)
    assert load_image(messy.sideways).size == (90, 40)


def test_stats_on_a_bad_file_names_the_file_and_fails_cleanly(messy, tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert _stats("--data", str(messy.folder), "--out", str(out)) == 2
    err = capsys.readouterr().err
    first_bad = min(messy.bad, key=lambda p: (p.parent.name, p.name))  # café ☕/empty.jpg
    assert str(first_bad) in err and "empty (0 bytes)" in err and "--skip-bad" in err
    assert "Traceback" not in err
    # nothing written, no empty OUT.parts/ left behind
    assert not out.exists() and not Path(f"{out}.parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("truncated.png", "half", "truncated or corrupt"),
        ("text.png", b"just some text\n", "not an image"),
        ("empty.png", b"", "empty (0 bytes)"),
    ],
)
def test_stats_on_a_bad_file_prints_no_raw_traceback(tmp_path, capsys, name, content, reason):
    root = tmp_path / "data" / "only"
    root.mkdir(parents=True)
    good = Image.new("RGB", (70, 50), (200, 30, 30))
    good.save(root / "a.png")
    if content == "half":
        data = (root / "a.png").read_bytes()
        content = data[: len(data) // 2]
    (root / name).write_bytes(content)
    out = tmp_path / "s.pt"
    assert _stats("--data", str(tmp_path / "data"), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert str(root / name) in err and reason in err and "Traceback" not in err
    assert not Path(f"{out}.parts").exists()


def test_stats_on_tar_shards_names_the_member_and_the_file_that_is_no_tar(messy, tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert _stats("--data", str(messy.root / "shards"), "--out", str(out)) == 2
    err = capsys.readouterr().err
    (member,) = messy.shard_bad
    assert member.split(":")[1] in err and "shard-1.tar" in err and "truncated" in err
    assert "Traceback" not in err and not Path(f"{out}.parts").exists()

    assert _stats("--data", str(messy.not_a_tar), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"{messy.not_a_tar} is not a tar archive" in err and "Traceback" not in err

    both = [str(messy.root / "shards"), str(messy.not_a_tar)]
    assert _stats("--data", *both, "--out", str(out), "--skip-bad") == 0
    stats = DatasetStats.load(out)
    assert int(stats.counts.sum()) == len(messy.shard_good)
    assert len(stats.skipped) == 2
    assert any("broken.tar is not a tar archive" in s for s in stats.skipped)
    assert any(member.split(":")[1] in s for s in stats.skipped)
    # a truncated member inside a real tar, without --skip-bad, in the library
    dataset = open_dataset(messy.shards, input_transform(64))
    with pytest.raises(OSError, match="shard-1.tar:s1/0002.png"):
        dataset[dataset.names.index(f"{messy.shards[1]}:s1/0002.png")]


@pytest.mark.parametrize(
    "option, value",
    [
        ("--top-k", "0"),
        ("--top-k", "-1"),
        ("--bins", "-1"),
        ("--bins", "0"),
        ("--batch-size", "0"),
        ("--shard-size", "0"),
        ("--workers", "-1"),
        ("--image-size", "0"),
        ("--top-k", "many"),
    ],
)
def test_stats_accepts_bad_option_values_no_more(messy, tmp_path, capsys, option, value):
    out = tmp_path / "s.pt"
    with pytest.raises(SystemExit) as exit_:
        _stats("--data", str(messy.folder), "--out", str(out), option, value)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and value in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_dataset_stats_validates_every_option_before_any_work(se, tmp_path):
    class Untouchable(torch.utils.data.Dataset):
        def __init__(self):
            self.classes = ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AssertionError("read before the options were checked")

    for kwargs, match in [
        ({"top_k": 0}, "top_k must be a positive int, got 0"),
        ({"bins": -1}, "bins must be a positive int, got -1"),
        ({"bins": 0}, "bins must be a positive int"),
        ({"batch_size": 2.5}, "batch_size must be a positive int"),
        ({"num_workers": -1}, "num_workers must be an int >= 0"),
        ({"out": tmp_path / "no" / "s.pt"}, "no folder"),
        ({"out": tmp_path}, "is a folder"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataset_stats(se, Untouchable(), progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_stats_failed_run_leaves_only_what_resume_needs(messy, tmp_path, capsys):
    """A run that stops at a bad file in its last shard keeps the shards done before it
    (and nothing else); rerun with --skip-bad, it resumes them and ends with the file a fresh
    --skip-bad run writes."""
    out, fresh = tmp_path / "s.pt", tmp_path / "fresh.pt"
    data = tmp_path / "data"
    shutil.copytree(messy.folder, data)
    late = data / "dog" / "zz-late-truncated.png"
    late.write_bytes((data / "cat" / "truncated.png").read_bytes())
    for bad in messy.bad:  # only the late one stays
        (data / bad.relative_to(messy.folder)).unlink()
    argv = ["--data", str(data), "--batch-size", "4", "--shard-size", "6"]
    assert _stats(*argv, "--out", str(out)) == 2
    assert "zz-late-truncated.png" in capsys.readouterr().err
    parts = Path(f"{out}.parts")
    assert not out.exists() and [p.name for p in parts.iterdir()] == ["rank-0-of-1.pt"]
    state = torch.load(parts / "rank-0-of-1.pt", weights_only=True)
    assert state["done"] == [0, 1, 2]  # 20 files, 6 a shard: it fails in the fourth
    assert _stats(*argv, "--out", str(out), "--skip-bad") == 0
    assert _stats(*argv, "--out", str(fresh), "--skip-bad") == 0
    a, b = DatasetStats.load(out), DatasetStats.load(fresh)
    assert not parts.exists() and a.skipped == b.skipped and len(a.skipped) == 1
    for name in a.blocks:
        for key, value in a.blocks[name].items():
            assert key == "kind" or torch.equal(value, b.blocks[name][key]), (name, key)


def test_stats_state_of_another_kind_is_refused_by_name(se, tmp_path):
    """A valid torch file holding a list where the resume state should be."""
    out = tmp_path / "s.pt"
    parts = Path(f"{out}.parts")
    parts.mkdir()
    torch.save([1, 2, 3], parts / "rank-0-of-1.pt")
    data = torch.utils.data.TensorDataset(torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"rank-0-of-1.pt is the state of a different run"):
        dataset_stats(se, data, out=out, num_classes=2, progress=False)


def test_fit_resume_from_a_list_is_refused_by_name(tmp_path):
    from attnviz.train import fit

    ckpt = tmp_path / "run.pt"
    torch.save(["not", "a", "checkpoint"], ckpt)
    data = torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    with pytest.raises(ValueError, match="run.pt is a checkpoint without the training state"):
        fit(model, data, epochs=1, checkpoint=ckpt, resume=True, device="cpu")


# -- galleries that cannot lie -----------------------------------------------------------------
def test_plot_gallery_can_show_the_wrong_images_no_more(messy, tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert _stats("--data", str(messy.folder), "--out", str(out), "--skip-bad") == 0
    # another folder with as many listed files, in as many classes
    other = tmp_path / "other"
    listed = open_dataset(messy.folder, input_transform(64))
    for i, (_, y) in enumerate(listed.samples):
        (other / f"class-{y}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (i * 9 % 255, 40, 90)).save(other / f"class-{y}" / f"{i}.png")
    assert len(open_dataset(other, input_transform(64))) == len(listed)
    png = tmp_path / "g.png"
    block = DatasetStats.load(out).channel_blocks[-1]
    argv = ["plot", str(out), "-o", str(png), "--gallery", block, "3"]
    assert cli.main([*argv, "--data", str(other)]) == 2
    err = capsys.readouterr().err
    stored = DatasetStats.load(out).meta["dataset"]["fingerprint"][:12]
    assert "computed on another data set" in err and stored in err
    assert str(messy.folder) in err and str(other) in err and not png.exists()
    # the right folder (with its bad files, never among the top images) draws
    assert cli.main([*argv, "--data", str(messy.folder)]) == 0
    assert Image.open(png).size[0] > 100


# -- the other commands that read a user's files -----------------------------------------------
def _overlay(path: Path, out: Path) -> list[str]:
    return [
        "overlay",
        str(path),
        "--model",
        "mobilenet_v3_small",
        "--weights",
        "none",
        "--size",
        "64",
        "-o",
        str(out),
    ]


def test_overlay_reads_every_good_file_and_names_every_bad_one(messy, tmp_path, capsys):
    modes = {}
    for path in sorted(messy.good):  # one of each mode, the sideways and the Unicode files
        with Image.open(path) as im:
            modes.setdefault(im.mode, path)
    chosen = {*modes.values(), messy.sideways, *(p for p in messy.good if "ünïcode" in p.name)}
    for i, path in enumerate(sorted(chosen)):
        out = tmp_path / f"{i}.png"
        assert cli.main(_overlay(path, out)) == 0, path
        w, h = Image.open(out).size  # the title over three panels of longer side 64
        assert w > 3 * 16 and h > 18 + 16 and max(w, h - 18) >= 64, (path, w, h)
    for path in messy.bad:
        assert cli.main(_overlay(path, tmp_path / "bad.png")) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "bad.png").exists()


def test_photo_explainer_loader_takes_every_good_file_and_reports_every_bad_one(messy):
    from test_photos import _upload

    from attnviz.widgets import PhotoPicker

    picker = PhotoPicker(["astronaut"])
    for path in sorted(messy.good):
        _upload(picker, path.name, path.read_bytes(), mime="image/png")
        assert picker.source == f"upload:{path.name}", path
        assert picker.image.mode == "RGB" and picker.image.size == load_image(path).size
    before = picker.image
    for path in messy.bad:
        _upload(picker, path.name, path.read_bytes())
        text = "".join(o.get("text", "") for o in picker.log.outputs)
        assert path.name in text and "Traceback" not in text
        assert picker.image is before
    picker.close()


def test_export_names_a_checkpoint_that_is_no_checkpoint(messy, tmp_path, capsys):
    for path in messy.bad:
        argv = ["export", "vit", "--out", str(tmp_path / "v.html"), "--checkpoint", str(path)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "v.html").exists()


def test_export_silently_creates_missing_folders_no_more(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "page.html"
    assert cli.main(["export", "stn", "--out", str(out)]) == 2
    assert "no folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("size", ["0", "-3", "100000"])
def test_overlay_size_is_bounded(tmp_path, capsys, size):
    photo = tmp_path / "p.png"
    Image.new("RGB", (50, 40)).save(photo)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["overlay", str(photo), "--size", size, "-o", str(tmp_path / "o.png")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--size" in err and size in err and not (tmp_path / "o.png").exists()


# -- the shipped models' manifest --------------------------------------------------------------
def _models() -> Path:
    from attnviz._resources import models_dir

    return models_dir()


def test_a_manifest_that_is_not_json_is_refused_naming_it(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format": "attnviz-models-1", "models": {', "utf-8")
    with pytest.raises(ValueError, match=r"manifest.json is not valid JSON"):
        shipped.manifest(folder)
    assert cli.main(["models", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "manifest.json") in err and "Traceback" not in err


def test_a_manifest_entry_without_sha256_is_refused_naming_the_manifest(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    data = json.loads((_models() / "manifest.json").read_text("utf-8"))
    entry = data["models"]["resnet10_se"]
    shutil.copy(_models() / entry["file"], folder / entry["file"])
    del entry["sha256"]
    (folder / "manifest.json").write_text(json.dumps(data), "utf-8")
    with pytest.raises(ValueError, match=r"manifest.json: the entry of 'resnet10_se' lacks sha256"):
        shipped.load("resnet10_se", folder=folder)


# -- the two docstrings ---------------------------------------------------------------------------
def test_the_insertion_blur_is_the_kernel_its_docstring_gives():
    from torchvision.transforms.functional import gaussian_blur

    from attnviz.metrics import faithfulness

    images = torch.rand(2, 3, 224, 224)
    expected = gaussian_blur(images, [23, 23], [5.0, 5.0])
    assert torch.equal(faithfulness._blurred(images), expected)
    assert "23 at 224 px" in faithfulness._blurred.__doc__
    doc = faithfulness.perturbation_curves.__doc__
    assert "black, as RISE" not in doc and "mean colour" in doc
