"""Class-wise excitation (SE paper, section 7.2): per-class moments, specificity, the figure."""

from __future__ import annotations

import gc
import math
import weakref

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import attnviz
from attnviz import CBAM, SqueezeExcitation, analysis
from attnviz.analysis import ChannelStats, channel_stats, plot_class_excitation

BLOCKS = ["2", "4.channel_gate"]


def _net(classes: int = 4) -> nn.Sequential:
    """conv -> SE (block "2") -> conv -> CBAM (channel gate "4.channel_gate") -> fc."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        SqueezeExcitation(8, reduction=2),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        CBAM(8, reduction=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def _data(n: int = 11, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.cat([torch.arange(classes), torch.randint(0, classes, (n - classes,))])
    return torch.rand(n, 3, 8, 8), labels[torch.randperm(n)]


def _constant_se(channels: int) -> SqueezeExcitation:
    """s = sigmoid(b2) whatever the input: W2 = 0."""
    se = SqueezeExcitation(channels, reduction=1)
    nn.init.zeros_(se.fc2.weight)
    return se


def _pass_through_se(channels: int) -> SqueezeExcitation:
    """s_c = sigmoid(4 z_c - 2): the excitation follows the channel's mean brightness."""
    se = SqueezeExcitation(channels, reduction=1)
    with torch.no_grad():
        se.fc1.weight.copy_(torch.eye(channels))
        se.fc1.bias.zero_()
        se.fc2.weight.copy_(4 * torch.eye(channels))
        se.fc2.bias.fill_(-2.0)
    return se


def _bright_channel_data(per_class: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of class k are brighter in channel k."""
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = 0.3 * torch.rand(len(labels), classes, 6, 6)
    images[torch.arange(len(labels)), labels] += 0.6
    return images, labels


def test_stats_equal_the_moments_computed_directly():
    model, (images, labels) = _net(), _data()
    stats = channel_stats(model, images, labels, batch_size=3)
    with torch.no_grad(), attnviz.capture(model, kinds="channel") as rec:
        for batch in images.split(3):  # the same batches, so the same float32 weights
            model(batch)
    assert stats.names == BLOCKS
    assert stats.counts.tolist() == torch.bincount(labels).tolist()
    for name in BLOCKS:
        s = rec[name].weights.double()
        for k in range(4):
            sk = s[labels == k]
            torch.testing.assert_close(stats.mean[name][k], sk.mean(0), atol=1e-12, rtol=0)
            var = sk.var(0, unbiased=False)
            torch.testing.assert_close(stats.var_within[name][k], var, atol=1e-12, rtol=0)
        torch.testing.assert_close(stats.overall_mean[name], s.mean(0), atol=1e-12, rtol=0)
        assert stats.mean[name].dtype == torch.float64


def test_batches_from_an_iterable_give_the_same_stats():
    model, (images, labels) = _net(), _data()
    a = channel_stats(model, images, labels, batch_size=4)
    pairs = [(images[i : i + 5], labels[i : i + 5].tolist()) for i in range(0, len(images), 5)]
    b = channel_stats(model, pairs, None)
    for name in BLOCKS:
        torch.testing.assert_close(a.mean[name], b.mean[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(a.var_within[name], b.var_within[name], atol=1e-6, rtol=0)


def test_names_select_blocks_and_classes_name_them():
    model, (images, labels) = _net(), _data()
    stats = channel_stats(
        model, images, labels, blocks="4.*", class_names=["a", "b", "c", "d", "e"]
    )
    assert stats.names == ["4.channel_gate"]
    assert stats.class_names == ["a", "b", "c", "d", "e"]
    assert stats.counts[4] == 0 and torch.isnan(stats.mean["4.channel_gate"][4]).all()
    assert math.isfinite(stats.specificity()["4.channel_gate"])  # the empty class is left out


def test_constant_excitation_has_zero_specificity():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), _constant_se(6))
    images, labels = _bright_channel_data()
    stats = channel_stats(model, images, labels, batch_size=4)
    assert stats.specificity() == {"1": 0.0}
    assert (stats.var_within["1"] == 0).all()
    assert "| 1 | 6 | 0 |" in stats.to_table()


def test_class_dependent_excitation_is_specific():
    model = nn.Sequential(_constant_se(3), _pass_through_se(3))
    images, labels = _bright_channel_data()
    stats = channel_stats(model, images, labels, batch_size=4)
    spec = stats.specificity()
    assert spec["0"] == 0.0  # an early, class-agnostic block
    assert spec["1"] > 1.0  # a late, class-specific one
    assert stats.mean["1"].argmax(dim=1).tolist() == [0, 1, 2]


def test_specificity_is_the_f_ratio_of_the_docstring():
    model, (images, labels) = _net(), _data()
    stats = channel_stats(model, images, labels)
    for name in BLOCKS:
        m, v = stats.mean[name], stats.var_within[name]
        between = ((m - m.mean(0)) ** 2).mean(0).mean()
        expected = float(between / (v.mean() + 1e-12))
        assert stats.specificity()[name] == pytest.approx(expected, rel=1e-9)


def test_one_class_gives_nan():
    model, (images, _) = _net(), _data()
    stats = channel_stats(model, images, torch.zeros(len(images), dtype=torch.long))
    assert all(math.isnan(s) for s in stats.specificity().values())


def test_records_of_one_batch_at_a_time(monkeypatch):
    """No record outlives its batch: at every forward pass only the current one is alive."""
    alive: list[weakref.ref] = []

    class Watched(attnviz.capture):
        def __enter__(self):
            rec = super().__enter__()
            alive.append(weakref.ref(rec))
            return rec

    seen = []

    def count(_module, args):
        gc.collect()
        seen.append((len(args[0]), sum(r() is not None for r in alive)))

    monkeypatch.setattr(analysis, "capture", Watched)
    model, (images, labels) = _net(), _data(n=23)
    handle = model.register_forward_pre_hook(count)
    try:
        channel_stats(model, images, labels, batch_size=5)
    finally:
        handle.remove()
    assert [b for b, _ in seen] == [5, 5, 5, 5, 3]
    assert [live for _, live in seen] == [1] * 5
    gc.collect()
    assert all(r() is None for r in alive)


def test_model_mode_and_hooks_are_restored():
    model, (images, labels) = _net(), _data()
    model.train()
    model[4].eval()
    flags = [m.training for m in model.modules()]
    channel_stats(model, images, labels, batch_size=4)
    assert [m.training for m in model.modules()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (torch.zeros(11), TypeError, "integer"),
        (torch.zeros(10, dtype=torch.long), ValueError, "11"),
        (torch.full((11,), 4), ValueError, r"\[0, 4\)"),
        (torch.full((11,), -1), ValueError, "lie in"),
    ],
)
def test_bad_labels_are_refused(labels, error, match):
    images, _ = _data()
    with pytest.raises(error, match=match):
        channel_stats(_net(), images, labels, num_classes=4)


def test_bad_arguments_are_refused():
    images, labels = _data()
    with pytest.raises(ValueError, match="batch_size"):
        channel_stats(_net(), images, labels, batch_size=0)
    with pytest.raises(ValueError, match="labels are needed"):
        channel_stats(_net(), images, None)
    with pytest.raises(ValueError, match="matches no attention module"):
        channel_stats(_net(), images, labels, blocks="nothing*")


@pytest.fixture
def stats() -> ChannelStats:
    model, (images, labels) = _net(), _data()
    return channel_stats(model, images, labels, class_names=["w", "x", "y", "z"])


def test_table_lists_every_block(stats):
    lines = stats.to_table().splitlines()
    assert lines[0] == "| block | channels | specificity |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {n}" for n in BLOCKS]


def test_figure_has_a_panel_per_block_and_a_line_per_class(stats):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plot_class_excitation(stats)
    assert isinstance(fig, Figure) and plt.get_fignums() == before  # not shown, no pyplot
    assert len(fig.axes) == len(BLOCKS)
    spec = stats.specificity()
    for ax, name in zip(fig.axes, BLOCKS):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == ["w", "x", "y", "z", "all"]
        assert lines[-1].get_linewidth() > lines[0].get_linewidth()
        torch.testing.assert_close(
            torch.as_tensor(lines[1].get_ydata()), stats.mean[name][1], check_dtype=False
        )
        assert name in ax.get_title() and f"{spec[name]:.3g}" in ax.get_title()
    fig.canvas.draw()  # renders without a display (Agg)


def test_figure_selects_blocks_and_channels(stats):
    fig = plot_class_excitation(stats, blocks="4.*", channels=3, ncols=1)
    (ax,) = fig.axes
    assert list(ax.get_lines()[0].get_xdata()) == [0, 1, 2]
    fig = plot_class_excitation(stats, channels=[1, 5])
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 5]
    with pytest.raises(ValueError, match="match none"):
        plot_class_excitation(stats, blocks="nope")
    assert matplotlib.get_backend()  # importable headless
