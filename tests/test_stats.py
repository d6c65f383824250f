"""Dataset statistics: streamed == in memory, tar shards == image folder, resumable after a
kill, 1 process == 2 processes under torchrun, memory flat over 10,000 images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from labtools import free_port
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import ToTensor

from attnviz import SqueezeExcitation, cli, render, shipped
from attnviz.analysis import channel_stats, plot_class_excitation, spatial_maps
from attnviz.capture import capture
from attnviz.data import digits_on_photos
from attnviz.models import small_resnet
from attnviz.photos import load_sample, sample_photos
from attnviz.render import as_pil
from attnviz.stats import DatasetStats, TarShards, dataset_stats, open_dataset

TOL = 1e-10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder: 64 x 64 crops of the shipped photos, one class per photo, 9 each."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for name in sample_photos():
        photo = load_sample(name).convert("RGB").resize((256, 256))
        (root / name).mkdir()
        for i in range(9):
            x, y = rng.integers(0, 256 - 96, 2)
            crop = photo.crop((int(x), int(y), int(x) + 96, int(y) + 96)).resize((64, 64))
            crop.save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def se():
    return shipped.load("resnet10_se")


def _tensors(dataset):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


def _same_channel_stats(streamed, reference):
    assert streamed.names == reference.names
    assert torch.equal(streamed.counts, reference.counts)
    for n in reference.names:
        for field in ("mean", "var_within", "overall_mean"):
            a, b = getattr(streamed, field)[n], getattr(reference, field)[n]
            assert torch.allclose(a, b, atol=TOL, rtol=0, equal_nan=True), (n, field)


def test_image_folder_streamed_equals_in_memory(folder, se, tmp_path):
    dataset = open_dataset(folder, ToTensor())
    # the same batches both ways: a network's float32 output may differ in its last bits
    # between batch sizes, and 1e-10 compares the reduction, not the convolutions
    stats = dataset_stats(
        se,
        dataset,
        out=tmp_path / "s.pt",
        batch_size=8,
        shard_size=16,
        num_workers=2,
        progress=False,
    )
    x, y = _tensors(dataset)
    reference = channel_stats(se, x, y, num_classes=4, class_names=dataset.classes, batch_size=8)
    _same_channel_stats(stats.channel_stats(), reference)
    assert stats.class_names == sample_photos() and stats.counts.tolist() == [9] * 4
    # the file describes itself and reads back with weights_only
    again = DatasetStats.load(tmp_path / "s.pt")
    assert again.meta["dataset"]["kind"] == "ImageFolder" and again.meta["dataset"]["size"] == 36
    assert again.meta["attnviz"] and len(again.meta["dataset"]["fingerprint"]) == 64
    _same_channel_stats(again.channel_stats(), reference)


def test_top_k_and_histogram_equal_a_brute_force_pass(folder, se):
    dataset = open_dataset(folder, ToTensor())
    stats = dataset_stats(
        se, dataset, batch_size=7, shard_size=10, top_k=5, bins=20, progress=False
    )
    x, _ = _tensors(dataset)
    with torch.no_grad(), capture(se, kinds="channel") as rec:
        se(x)
    for name, r in rec.items():
        w = r.weights.double()
        values, index = stats.top(name, 3)
        order = sorted(range(len(w)), key=lambda i: (-w[i, 3].item(), i))[:5]
        # batches of 7 and one batch of 36 may round a convolution differently (1 ulp)
        assert index.tolist() == order
        torch.testing.assert_close(values, w[order, 3], rtol=1e-6, atol=0)
        _, low_index = stats.top(name, 3, lowest=True)
        assert low_index.tolist() == sorted(range(len(w)), key=lambda i: (w[i, 3].item(), i))[:5]
        counts, edges = stats.histogram(name)
        expected = torch.histc(w.flatten(), bins=20, min=0, max=1)
        assert counts.sum() == w.numel() and torch.equal(counts.double(), expected.double())
        assert len(edges) == 21


def _known_se() -> torch.nn.Module:
    """An SE block whose weights are known: channels 0-6 constant (0, 0.05, 0.15, 0.15,
    0.5, 0.62, 1), channel 7 sigmoid(mean of input channel 0)."""
    se = SqueezeExcitation(8, reduction=4)
    logit = torch.logit(torch.tensor([0.05, 0.15, 0.62]))
    with torch.no_grad():
        se.fc1.weight.zero_()
        se.fc1.weight[0, 0] = 1.0
        se.fc1.bias.copy_(torch.tensor([5.0, 1.0]))  # h0 = relu(z0 + 5) = z0 + 5
        se.fc2.weight.zero_()
        se.fc2.weight[7, 0] = 1.0
        b = [-200.0, logit[0], logit[1], logit[1], 0.0, logit[2], 200.0, -5.0]
        se.fc2.bias.copy_(torch.tensor(b))
    return torch.nn.Sequential(se).eval()


def test_histogram_edges_span_zero_to_one_and_counts_land_in_their_bins():
    x = torch.rand(5, 8, 4, 4)
    x[:, 0] = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])[:, None, None]
    dataset = TensorDataset(x, torch.tensor([0, 1, 0, 1, 0]))
    stats = dataset_stats(_known_se(), dataset, num_classes=2, bins=10, progress=False)
    counts, edges = stats.histogram("0")
    # edges: 11 evenly spaced values from the documented 0 to 1
    np.testing.assert_allclose(edges.numpy(), np.linspace(0, 1, 11), rtol=0, atol=1e-12)
    # by hand: per image 0 and 0.05 -> bin 0, 0.15 twice -> bin 1, 0.5 -> bin 5 (bins are
    # closed on the left), 0.62 -> bin 6, 1 -> bin 9 (the last bin holds 1); channel 7 is
    # sigmoid(-3, -1, 0, 1, 3) = 0.047, 0.269, 0.5, 0.731, 0.953 -> bins 0, 2, 5, 7, 9
    assert counts.tolist() == [11, 10, 1, 0, 0, 6, 5, 1, 0, 6]
    hist = stats.blocks["0"]["hist"]
    assert hist[0] == 0 and hist[-1] == 0  # nothing below 0 or above 1
    # every weight lies inside the bin the edges give it
    model = _known_se()
    with torch.no_grad(), capture(model, kinds="channel") as rec:
        model(x)
    w = rec["0"].weights.double().flatten().numpy()
    by_edges, _ = np.histogram(w, bins=edges.numpy())
    assert counts.tolist() == by_edges.tolist()


def test_digits_on_photos_channel_and_spatial_maps(tmp_path):
    cbam = shipped.load("resnet10_cbam")
    test = digits_on_photos("test", n=300, seed=1)
    dataset = TensorDataset(test.images, test.labels)
    stats = dataset_stats(
        cbam, dataset, num_classes=10, batch_size=32, shard_size=64, progress=False
    )
    reference = channel_stats(cbam, test.images, test.labels, num_classes=10, batch_size=32)
    _same_channel_stats(stats.channel_stats(), reference)
    maps = spatial_maps(cbam, test.images, batch_size=32)
    assert stats.spatial_blocks == list(maps)
    for name, m in maps.items():
        reference = torch.stack([m[test.labels == k].double().mean(0) for k in range(10)])
        assert torch.allclose(stats.mean_map(name), reference, atol=TOL, rtol=0)


def _write_tars(folder: Path, out: Path) -> list[Path]:
    """The image folder as two WebDataset shards (key.png + key.cls), in ImageFolder order."""
    dataset = open_dataset(folder, None)
    tars = [out / "shard-000.tar", out / "shard-001.tar"]
    half = len(dataset.samples) // 2
    for t, chunk in enumerate([dataset.samples[:half], dataset.samples[half:]]):
        with tarfile.open(tars[t], "w") as tar:
            for j, (file, label) in enumerate(chunk):
                key = f"s{t}_{j:04d}"
                tar.add(file, arcname=f"{key}.png")
                cls = out / f"{key}.cls"
                cls.write_text(str(label))
                tar.add(cls, arcname=f"{key}.cls")
    return tars


def test_tar_shards_give_the_image_folder_result(folder, se, tmp_path):
    tars = _write_tars(folder, tmp_path)
    shards = open_dataset(tmp_path, ToTensor())
    assert isinstance(shards, TarShards) and len(shards) == 36
    a = dataset_stats(se, shards, num_classes=4, batch_size=8, shard_size=10, progress=False)
    b = dataset_stats(
        se, open_dataset(folder, ToTensor()), batch_size=8, shard_size=10, progress=False
    )
    for name in a.blocks:
        for key in ("mean", "m2", "top_index", "hist"):
            assert torch.equal(a.blocks[name][key], b.blocks[name][key])
    with pytest.raises(ValueError, match="needs an image"):
        with tarfile.open(tmp_path / "bad.tar", "w") as tar:
            tar.add(tmp_path / "s0_0000.cls", arcname="x.cls")
        TarShards([tmp_path / "bad.tar"])
    assert tars[0].is_file()


class _Interrupt(Exception):
    pass


def test_interrupted_and_resumed_equals_uninterrupted(folder, se, tmp_path):
    dataset = open_dataset(folder, ToTensor())
    some = ("layer[23]*",)  # a tuple of patterns: read back from the state file, it must match
    whole = dataset_stats(
        se, dataset, out=tmp_path / "a.pt", shard_size=8, progress=False, blocks=some
    )
    assert list(whole.blocks) == ["layer2.0.attention", "layer3.0.attention"]

    def stop(shard):
        if shard == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        dataset_stats(
            se,
            dataset,
            out=tmp_path / "b.pt",
            shard_size=8,
            progress=False,
            on_shard=stop,
            blocks=some,
        )
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "b.pt.parts").is_dir()
    with pytest.raises(ValueError, match="different run.*delete"):
        dataset_stats(se, dataset, out=tmp_path / "b.pt", shard_size=5, progress=False, blocks=some)
    seen = []
    resumed = dataset_stats(
        se,
        dataset,
        out=tmp_path / "b.pt",
        shard_size=8,
        progress=False,
        on_shard=seen.append,
        blocks=some,
    )
    assert seen == [3, 4]  # shards 0-2 were done
    for name in whole.blocks:
        for key, value in whole.blocks[name].items():
            assert key == "kind" or torch.equal(value, resumed.blocks[name][key]), (name, key)
    assert not (tmp_path / "b.pt.parts").exists(), "a finished run removes its state"


def _stats_cli(folder, out, *extra):
    return [
        sys.executable,
        "-m",
        "attnviz.cli",
        "stats",
        "--model",
        "shipped:resnet10_se",
        "--data",
        str(folder),
        "--out",
        str(out),
        "--batch-size",
        "4",
        *extra,
    ]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """240 digits on photos as an ImageFolder of PNGs (60 shards of 4: time to kill a run)."""
    root = tmp_path_factory.mktemp("digits")
    test = digits_on_photos("test", n=240, seed=4)
    for i, (x, y) in enumerate(zip(test.images, test.labels.tolist())):
        (root / str(y)).mkdir(exist_ok=True)
        as_pil(x).save(root / str(y) / f"{i:04d}.png")
    return root


@pytest.mark.slow
def test_killed_at_any_moment_a_rerun_finishes_with_the_same_file(digits_folder, tmp_path):
    folder = digits_folder
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _stats_cli(folder, tmp_path / "a.pt", "--shard-size", "4"),
        env=env,
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        _stats_cli(folder, tmp_path / "b.pt", "--shard-size", "4"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "b.pt.parts" / "rank-0-of-1.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (tmp_path / "b.pt").exists(), "killed before it finished"
    subprocess.run(
        _stats_cli(folder, tmp_path / "b.pt", "--shard-size", "4"),
        env=env,
        check=True,
        capture_output=True,
    )
    a, b = DatasetStats.load(tmp_path / "a.pt"), DatasetStats.load(tmp_path / "b.pt")
    for name in a.blocks:
        for key, value in a.blocks[name].items():
            assert key == "kind" or torch.equal(value, b.blocks[name][key]), (name, key)


@pytest.mark.slow
def test_two_processes_under_torchrun_equal_one(folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one.pt"
    subprocess.run(
        _stats_cli(folder, one, "--shard-size", "5"), env=env, check=True, capture_output=True
    )
    two = tmp_path / "two.pt"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *_stats_cli(folder, two, "--shard-size", "5")[1:],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = DatasetStats.load(one), DatasetStats.load(two)
    assert b.meta["processes"] == 2 and a.meta["processes"] == 1
    assert torch.equal(a.counts, b.counts) and list(a.blocks) == list(b.blocks)
    for name in a.blocks:
        for key in ("n", "hist", "top_index", "bottom_index"):
            assert torch.equal(a.blocks[name][key], b.blocks[name][key]), (name, key)
        for key in ("mean", "m2", "top_values"):
            assert torch.allclose(a.blocks[name][key], b.blocks[name][key], atol=1e-12, rtol=0)


class _Synthetic(Dataset):
    """n images made from their index on the fly: nothing held in memory."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=g), i % 10


def test_memory_stays_flat_over_ten_thousand_images():
    torch.manual_seed(0)
    model = small_resnet(10, attention="cbam", width=8).eval()
    rss = []

    def measure(shard):
        rss.append(psutil.Process().memory_info().rss)

    stats = dataset_stats(
        model,
        _Synthetic(10_000),
        num_classes=10,
        batch_size=100,
        shard_size=1000,
        progress=False,
        on_shard=measure,
    )
    assert int(stats.counts.sum()) == 10_000 and len(rss) == 10
    grown = (max(rss[2:]) - rss[2]) / 2**20
    assert grown < 25, f"RSS grew by {grown:.0f} MiB from shard 3 to 10: {rss}"


def test_bad_input_says_what_to_do(se, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        dataset_stats(se, TensorDataset(torch.zeros(0, 3, 64, 64), torch.zeros(0)), num_classes=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        dataset_stats(
            se,
            TensorDataset(torch.zeros(4, 3, 64, 64), torch.tensor([0, 1, 5, 1])),
            num_classes=2,
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="not an image folder"):
        open_dataset(tmp_path, ToTensor())


def _plot_cli(stats_file, png, *extra) -> np.ndarray:
    assert cli.main(["plot", str(stats_file), "-o", str(png), *extra]) == 0
    return np.asarray(Image.open(png).convert("RGB"))


def test_plot_and_gallery_from_the_file(folder, se, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.pt"
    assert (
        cli.main(
            [
                "stats",
                "--model",
                "shipped:resnet10_se",
                "--data",
                str(folder),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    drawn = []
    real = render.figure_to_image
    monkeypatch.setattr(render, "figure_to_image", lambda f, **kw: drawn.append(f) or real(f, **kw))
    png = _plot_cli(out, tmp_path / "classwise.png")
    assert png.shape[1] > 300
    # what is drawn: one panel per block, one line per class with its mean weight per
    # channel and a line for all images, the values of the file
    stats = DatasetStats.load(out).channel_stats()
    (fig,) = drawn
    assert len(fig.axes) == len(stats.names) == 4
    for ax, name in zip(fig.axes, stats.names):
        assert ax.get_title().startswith(name)
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [*stats.class_names, "all"]
        c = stats.mean[name].shape[1]
        for k, line in enumerate(lines[:-1]):
            np.testing.assert_array_equal(line.get_xdata(), np.arange(c))
            np.testing.assert_allclose(line.get_ydata(), stats.mean[name][k].numpy(), atol=1e-12)
        np.testing.assert_allclose(
            lines[-1].get_ydata(), stats.overall_mean[name].numpy(), atol=1e-12
        )
    # the PNG holds those pixels: a figure drawn afresh from the file's statistics
    assert np.array_equal(png, np.asarray(real(plot_class_excitation(stats))))
    # the same file with two classes swapped in the first block: pixels change in its
    # panel only (the swapped curves), and nowhere else
    swapped = DatasetStats.load(out)
    first = swapped.blocks[stats.names[0]]
    for key in ("mean", "m2"):
        first[key] = first[key][[1, 0, 2, 3]].clone()
    swapped.save(tmp_path / "swapped.pt")
    changed = np.any(_plot_cli(tmp_path / "swapped.pt", tmp_path / "swapped.png") != png, axis=2)
    assert changed.sum() > 50
    x0, y0, x1, y1 = fig.axes[0].get_window_extent().extents
    rows, cols = np.nonzero(changed)
    height = png.shape[0]
    assert cols.min() >= x0 - 1 and cols.max() <= x1 + 1, (cols.min(), cols.max(), x0, x1)
    assert rows.min() >= height - y1 - 1 and rows.max() <= height - y0 + 1

    gallery = _plot_cli(
        out, tmp_path / "gallery.png", "--gallery", "layer3.0.attention", "5", "--data", str(folder)
    )
    assert gallery.shape[1] > 100
    # the strips hold the images that excite channel 5 most and least, best first
    dataset = open_dataset(folder, ToTensor())
    side = 72  # ChannelGallery's tile
    loaded = DatasetStats.load(out)
    top = loaded.top("layer3.0.attention", 5)[1]
    low = loaded.top("layer3.0.attention", 5, lowest=True)[1]
    assert top[0] != low[0]
    for y, index in ((34, top[0]), (34 + side + 6 + 16, low[0])):
        tile = as_pil(dataset[int(index)][0]).resize((side, side))
        assert np.array_equal(gallery[y : y + side, :side], np.asarray(tile)), int(index)
    assert cli.main(["plot", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.png")]) == 2


def test_cli_names_a_wrong_model_or_data(folder, tmp_path, capsys):
    out = str(tmp_path / "s.pt")
    assert cli.main(["stats", "--model", "shipped:nope", "--data", str(folder), "--out", out]) == 2
    assert "the shipped models are" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "stats",
                "--model",
                "shipped:resnet10_se",
                "--data",
                str(tmp_path / "none"),
                "--out",
                out,
            ]
        )
        == 2
    )
    assert "not an image folder" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
