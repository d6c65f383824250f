"""Distorted MNIST: reproducible, cleanly split; transforms and boxes match the pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnviz.data import DISTORTIONS, distort, distorted_mnist, mnist_split

AFFINE_KINDS = ["none", "R", "RTS", "cluttered"]


@pytest.fixture(scope="module")
def split():
    return mnist_split()


def test_split_is_fixed_stratified_and_disjoint(split):
    (xtr, ytr), (xte, yte) = split["train"], split["test"]
    assert len(ytr) == 4000 and len(yte) == 1000
    assert torch.bincount(yte).tolist() == [100] * 10
    assert xtr.shape == (4000, 28, 28) and 0 <= xtr.min() and xtr.max() <= 1
    train_keys = {hash(x.numpy().tobytes()) for x in xtr}
    assert not any(hash(x.numpy().tobytes()) in train_keys for x in xte)
    again = mnist_split()
    assert torch.equal(again["test"][0], xte) and torch.equal(again["train"][1], ytr)


@pytest.mark.parametrize("kind", list(DISTORTIONS))
def test_distortions_are_reproducible_from_the_seed(kind, split):
    x, y = split["test"][0][:64], split["test"][1][:64]
    a, b, c = distort(x, y, kind, seed=3), distort(x, y, kind, seed=3), distort(x, y, kind, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.transforms, b.transforms)
    assert a.images.shape == (64, 1, DISTORTIONS[kind], DISTORTIONS[kind])
    if kind != "none":
        assert not torch.equal(a.images, c.images)
    sample = a[5]
    assert sample.image.shape == (1, DISTORTIONS[kind], DISTORTIONS[kind])
    assert int(sample.label) == int(y[5]) and sample.transform.shape == (3, 3)


@pytest.mark.parametrize("kind", [*AFFINE_KINDS, "P"])
def test_inverse_transform_recovers_the_upright_digit(kind, split):
    """Sampling the canvas with the inverse transform (the ideal STN theta) gives the digit back."""
    x, y = split["test"][0][:64], split["test"][1][:64]
    d = distort(x, y, kind, seed=1)
    inv = torch.linalg.inv(d.transforms)
    grid_t = (torch.arange(28) + 0.5) / 28 * 2 - 1
    ys, xs = torch.meshgrid(grid_t, grid_t, indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    mapped = torch.einsum("nij,pj->npi", inv, pts)
    grid = (mapped[..., :2] / mapped[..., 2:]).reshape(-1, 28, 28, 2)
    back = F.grid_sample(d.images, grid, align_corners=False)
    # compare where the digit has ink; rotations and scaling blur, so use correlation
    a, b = back.flatten(1), d.digits.flatten(1)
    corr = F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True))
    # clutter fragments that fall inside the digit's frame lower the correlation a little
    assert corr.median() > (0.8 if kind == "cluttered" else 0.9), corr.median()


@pytest.mark.parametrize("kind", list(DISTORTIONS))
def test_box_holds_the_digits_mass(kind, split):
    x, y = split["test"][0][:128], split["test"][1][:128]
    d = distort(x, y, kind, seed=2)
    clean = d.images if kind != "cluttered" else _without_clutter(d)
    mass = clean[:, 0]
    inside = torch.zeros_like(mass)
    for i, (x0, y0, x1, y1) in enumerate(d.boxes.long().tolist()):
        inside[i, y0:y1, x0:x1] = mass[i, y0:y1, x0:x1]
    share = inside.sum((1, 2)) / mass.sum((1, 2))
    assert share.min() > 0.97, share.min()
    b = d.boxes
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert b.min() >= 0 and b.max() <= DISTORTIONS[kind]


def _without_clutter(d):
    """Re-render the cluttered set's digits from their recorded transforms, without clutter."""
    t = (torch.arange(60) + 0.5) / 60 * 2 - 1
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    grid = torch.einsum(
        "nij,hwj->nhwi", d.transforms[:, :2], torch.stack([xs, ys, torch.ones_like(xs)], -1)
    )
    return F.grid_sample(d.digits, grid, align_corners=False)


def test_rts_box_matches_the_transform(split):
    """The digit's ink box mapped through the recorded RTS transform lands on the given box."""
    x, y = split["test"][0][:200], split["test"][1][:200]
    d = distort(x, y, "RTS", seed=5)
    fwd = torch.linalg.inv(d.transforms)  # digit normalised -> canvas normalised
    ink = x > 0.2
    centres = []
    for i in range(len(x)):
        ys, xs = torch.nonzero(ink[i], as_tuple=True)
        pts = torch.stack(
            [(xs + 0.5) / 14 - 1, (ys + 0.5) / 14 - 1, torch.ones_like(xs, dtype=torch.float)], 0
        )
        canvas = (fwd[i] @ pts.float())[:2]
        px = (canvas + 1) * 21
        centres.append(px.mean(1))
    centres = torch.stack(centres)
    b = d.boxes
    inside = (
        (centres[:, 0] > b[:, 0])
        & (centres[:, 0] < b[:, 2])
        & (centres[:, 1] > b[:, 1])
        & (centres[:, 1] < b[:, 3])
    )
    assert inside.all()
    scale = 1 / torch.linalg.det(d.transforms[:, :2, :2]).abs().sqrt() * 42 / 28
    assert scale.min() >= 0.7 - 1e-4 and scale.max() <= 1.2 + 1e-4


def test_cluttered_uses_only_the_given_pool(split):
    x, y = split["test"][0][:32], split["test"][1][:32]
    empty = torch.zeros(5, 28, 28)
    d = distort(x, y, "cluttered", seed=0, clutter_pool=empty)
    assert torch.equal(d.images, _without_clutter(d).clamp(0, 1))
    noisy = distort(x, y, "cluttered", seed=0)
    assert (noisy.images > d.images + 0.1).flatten(1).any(1).float().mean() > 0.9


def test_train_and_test_streams_differ_and_epochs_resample():
    a = distorted_mnist("RTS", "train", seed=0)
    b = distorted_mnist("RTS", "train", seed=1)
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.images, b.images)
    assert len(distorted_mnist("R", "test", seed=0)) == 1000


def test_bad_arguments_name_the_fix(split):
    x, y = split["test"]
    with pytest.raises(ValueError, match="kind must be one of"):
        distort(x, y, "TPS")
    with pytest.raises(ValueError, match="N x 28 x 28"):
        distort(x[:, :20], y)
    with pytest.raises(ValueError, match="labels"):
        distort(x, y[:3])
    with pytest.raises(ValueError, match="split"):
        distorted_mnist("RTS", "validation")


def test_returned_tensors_belong_to_the_caller():
    ds = distorted_mnist("RTS", "test", seed=0)
    ds.digits.zero_()
    ds.images.zero_()
    again = distorted_mnist("RTS", "test", seed=0)
    assert again.digits.max() > 0.5 and again.images.max() > 0.5


def test_bad_seeds_and_canvases_are_named():
    with pytest.raises(TypeError, match="seed must be an int, got None"):
        distorted_mnist("RTS", "test", seed=None)
    with pytest.raises(TypeError, match="seed must be an int, got 2.7"):
        distorted_mnist("RTS", "test", seed=2.7)
    for canvas in (0, 8, 28.0, True):
        with pytest.raises(ValueError, match="canvas must be None"):
            distorted_mnist("RTS", "test", canvas=canvas)
    assert distorted_mnist("R", "test", canvas=32).images.shape[-1] == 32
