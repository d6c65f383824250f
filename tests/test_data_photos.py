"""Digits on photos: seeded; image = alpha * colour + (1 - alpha) * background; clean split."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from attnviz.data import (
    DEFAULT_PHOTOS,
    PHOTOS,
    PhotoDigits,
    PhotoSample,
    digits_on_photos,
    mnist_split,
    photo_background,
    photo_regions,
)
from attnviz.data import photo_digits as D

N, SIZE = 300, 64


@pytest.fixture(scope="module")
def train() -> PhotoDigits:
    return digits_on_photos("train", N, SIZE, seed=1)


@pytest.fixture(scope="module")
def test() -> PhotoDigits:
    return digits_on_photos("test", N, SIZE, seed=1)


def _in_box(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """N x size x size: which pixels lie inside each (x0, y0, x1, y1) edge box."""
    i = torch.arange(size)
    inx = (i >= boxes[:, 0, None]) & (i < boxes[:, 2, None])
    iny = (i >= boxes[:, 1, None]) & (i < boxes[:, 3, None])
    return iny[:, :, None] & inx[:, None, :]


def test_reproducible_from_the_seed_with_separate_train_and_test_streams(train):
    again = digits_on_photos("train", N, SIZE, seed=1)
    for name in ("images", "labels", "masks", "alphas", "boxes", "colours", "crops"):
        assert torch.equal(getattr(again, name), getattr(train, name)), name
    assert torch.equal(again.photo_ids, train.photo_ids)
    assert torch.equal(again.digit_index, train.digit_index)
    other = digits_on_photos("train", N, SIZE, seed=2)
    assert not torch.equal(other.images, train.images)
    assert not torch.equal(other.crops, train.crops)


def test_rendering_in_chunks_changes_nothing(train, monkeypatch):
    monkeypatch.setattr(D, "_CHUNK_PIXELS", 7 * SIZE * SIZE)  # chunks of 7 images
    again = digits_on_photos("train", N, SIZE, seed=1)
    assert torch.equal(again.images, train.images) and torch.equal(again.boxes, train.boxes)


def test_shapes_dtypes_and_ranges(train):
    assert len(train) == N and train.split == "train" and train.seed == 1
    assert train.images.shape == (N, 3, SIZE, SIZE) and train.images.dtype == torch.float32
    assert 0 <= train.images.min() and train.images.max() <= 1
    assert train.labels.shape == (N,) and train.labels.dtype == torch.int64
    assert train.masks.shape == (N, SIZE, SIZE) and train.masks.dtype == torch.bool
    assert train.alphas.shape == (N, 1, SIZE, SIZE) and 0 <= train.alphas.min() <= 1
    assert train.boxes.shape == (N, 4) and train.colours.shape == (N, 3)
    assert train.crops.shape == (N, 4) and train.photo_ids.shape == (N,)
    assert train.digit_index.shape == (N,) and train.transforms.shape == (N, 3, 3)
    assert train.photo_names == DEFAULT_PHOTOS and set(train.photo_ids.tolist()) == {
        0,
        1,
        2,
        3,
        4,
        5,
    }
    assert train.mean.shape == (3,) and train.std.shape == (3,)
    assert torch.allclose(train.mean, train.images.mean(dim=(0, 2, 3)))
    assert (0.05 < train.std).all() and (train.std < 0.5).all()
    assert "split='train'" in repr(train)


def test_items_are_named_tuples_that_collate(train):
    sample = train[7]
    assert isinstance(sample, PhotoSample)
    assert sample.image.shape == (3, SIZE, SIZE) and sample.mask.shape == (SIZE, SIZE)
    assert int(sample.label) == int(train.labels[7]) and torch.equal(sample.box, train.boxes[7])
    batch = next(iter(DataLoader(train, batch_size=8)))
    assert isinstance(batch, PhotoSample)
    assert batch.image.shape == (8, 3, SIZE, SIZE) and batch.box.shape == (8, 4)


def test_image_is_the_alpha_blend_of_colour_and_background(train):
    """Re-render the crops alone: image = alpha * colour + (1 - alpha) * background, everywhere."""
    background = train.backgrounds()
    alpha, colour = train.alphas, train.colours[:, :, None, None]
    assert torch.allclose(train.images, alpha * colour + (1 - alpha) * background, atol=1e-5)
    solid = (alpha > 0.95).expand_as(train.images)
    assert solid.any()
    assert (train.images - colour.expand_as(train.images))[solid].abs().max() <= 0.05 + 1e-6


def test_mask_is_the_pasted_digit(train):
    """The alpha is the source digit warped by ``transforms`` (torch's own affine_grid)."""
    digits = mnist_split()["train"][0][train.digit_index][:, None]
    grid = F.affine_grid(train.transforms[:, :2], (N, 1, SIZE, SIZE), align_corners=False)
    alpha = F.grid_sample(digits, grid, align_corners=False)
    assert torch.allclose(train.alphas, alpha.clamp(0, 1), atol=1e-5)
    assert torch.equal(train.masks, train.alphas[:, 0] > 0.5)
    assert (train.masks.sum(dim=(1, 2)) > 10).all()
    # the 28 x 28 frame's side is digit_scale * size: the linear part is R^T / digit_scale
    scale = torch.linalg.det(train.transforms[:, :2, :2]) ** -0.5
    assert (scale >= 0.35 - 1e-5).all() and (scale <= 0.6 + 1e-5).all()
    angle = torch.atan2(train.transforms[:, 1, 0], train.transforms[:, 0, 0]).rad2deg()
    assert angle.abs().max() <= 15 + 1e-3


def test_digit_colour_contrasts_with_the_background_under_it(train):
    alpha = train.alphas
    under = (alpha * train.backgrounds()).sum(dim=(2, 3)) / alpha.sum(dim=(2, 3))
    distance = (train.colours - under).norm(dim=1)
    assert distance.median() > 0.6 and distance.min() > 0.25, distance.min()


def test_ink_lies_in_the_box(train):
    inside = _in_box(train.boxes, SIZE)
    alpha = train.alphas[:, 0]
    mass = (alpha * inside).sum(dim=(1, 2)) / alpha.sum(dim=(1, 2))
    assert mass.min() >= 0.99, mass.min()
    assert not (train.masks & ~inside).any()
    # tight: every edge row and column of the box holds ink
    x0, y0, x1, y1 = train.boxes.long().T
    rows, n = torch.arange(N), alpha > 0.05
    assert n[rows, y0].any(1).all() and n[rows, y1 - 1].any(1).all()
    assert n[rows, :, x0].any(1).all() and n[rows, :, x1 - 1].any(1).all()


def test_train_and_test_share_no_digit(train, test):
    parts = mnist_split()
    for ds in (train, test):
        labels = parts[ds.split][1]
        assert int(ds.digit_index.max()) < len(labels)
        assert torch.equal(ds.labels, labels[ds.digit_index])
    train_keys = {d.numpy().tobytes() for d in parts["train"][0][train.digit_index]}
    test_keys = {d.numpy().tobytes() for d in parts["test"][0][test.digit_index]}
    assert not train_keys & test_keys


def test_train_and_test_share_no_background(train, test):
    for ds in (train, test):
        x0, y0, x1, y1 = ds.regions[ds.photo_ids].T
        c = ds.crops
        assert ((c[:, 0] >= x0) & (c[:, 1] >= y0) & (c[:, 2] <= x1) & (c[:, 3] <= y1)).all()
        assert torch.allclose(c[:, 2] - c[:, 0], c[:, 3] - c[:, 1])  # square crops
    for p, name in enumerate(DEFAULT_PHOTOS):
        regions = photo_regions(name)
        assert regions["train"][2] <= regions["test"][0]  # train is left of test
        assert tuple(train.regions[p].tolist()) == regions["train"]
        assert tuple(test.regions[p].tolist()) == regions["test"]
        crops = test.crops[test.photo_ids == p]
        tx0, ty0, tx1, ty1 = train.regions[p]
        overlap = (
            (crops[:, 0] < tx1) & (crops[:, 2] > tx0) & (crops[:, 1] < ty1) & (crops[:, 3] > ty0)
        )
        assert len(crops) and not overlap.any(), name


@pytest.mark.parametrize("split", ["train", "test"])
def test_no_pixel_of_the_other_split_is_ever_read(split, monkeypatch):
    """Poison the other split's region of every photo with NaN: no NaN may reach an image."""
    other = "test" if split == "train" else "train"
    poisoned = {}
    for name in DEFAULT_PHOTOS:
        photo = photo_background(name).clone()
        x0, y0, x1, y1 = photo_regions(name)[other]
        photo[:, y0:y1, x0:x1] = float("nan")
        poisoned[name] = photo
    monkeypatch.setattr(D, "_PHOTO_CACHE", poisoned)
    monkeypatch.setattr(D, "_ATLAS_CACHE", {})
    ds = digits_on_photos(split, N, SIZE, seed=3)
    assert not ds.images.isnan().any()


def test_labels_are_balanced(test):
    counts = torch.bincount(test.labels, minlength=10)
    assert (counts > N / 10 / 2).all() and (counts < N / 10 * 1.5).all(), counts
    full = digits_on_photos("test", 1000, 32, seed=0)  # one pass over the 1,000 test digits
    assert torch.bincount(full.labels).tolist() == [100] * 10
    assert sorted(full.digit_index.tolist()) == list(range(1000))


def test_photo_backgrounds_and_choice():
    assert set(DEFAULT_PHOTOS) <= set(PHOTOS)
    for name in DEFAULT_PHOTOS:
        photo = photo_background(name)
        assert photo.shape[0] == 3 and min(photo.shape[1:]) == 256
        assert 0 <= photo.min() and photo.max() <= 1
        again = photo_background(name)
        assert again is not photo and torch.equal(again, photo)  # the caller owns each copy
    photo_background("astronaut").zero_()  # a caller's change reaches no later call
    assert photo_background("astronaut").max() > 0.5
    ds = digits_on_photos("test", 40, 32, seed=0, photos=["retina", "coffee"])
    assert ds.photo_names == ("retina", "coffee") and set(ds.photo_ids.tolist()) == {0, 1}


def test_ten_thousand_images_at_64(capsys):
    start = time.perf_counter()
    ds = digits_on_photos("train", 10000, 64, seed=0)
    seconds = time.perf_counter() - start
    assert ds.images.shape == (10000, 3, 64, 64) and not ds.images.isnan().any()
    with capsys.disabled():
        print(f"\ndigits_on_photos: 10,000 images at 64 x 64 in {seconds:.2f} s")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "val"}, "split"),
        ({"n": 0}, "n must"),
        ({"n": 2.5}, "n must"),
        ({"n": True}, "n must"),
        ({"size": 8}, "size must"),
        ({"size": "64"}, "size must"),
        ({"digit_scale": (0.6, 0.3)}, "digit_scale"),
        ({"digit_scale": (0.0, 0.5)}, "digit_scale"),
        ({"digit_scale": (0.5, 0.9)}, "digit_scale"),
        ({"digit_scale": 0.5}, "digit_scale"),
        ({"digit_scale": (0.1, 0.2, 0.3)}, "digit_scale"),
        ({"photos": ["moon"]}, "photos"),
        ({"photos": []}, "photos"),
        ({"photos": ["coffee", "coffee"]}, "photos"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        digits_on_photos(**{"n": 4, **kwargs})


def test_unknown_photo_name_raises():
    with pytest.raises(ValueError, match="photo must be one of"):
        photo_background("camera")


def test_bad_arguments_are_named_before_anything_is_allocated():
    with pytest.raises(TypeError, match="seed must be an int, got None"):
        digits_on_photos("test", 4, 32, seed=None)
    with pytest.raises(TypeError, match="seed must be an int, got 1.5"):
        digits_on_photos("test", 4, 32, seed=1.5)
    with pytest.raises(ValueError, match=r"digit_scale 0.01 .* 0.3 pixels wide .* at least 0.250"):
        digits_on_photos("test", 4, 32, digit_scale=(0.01, 0.01))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"n=1000000000 images of 64 x 64 need 7\d+\.\d GiB"):
        digits_on_photos("train", 1_000_000_000, 64)
    assert time.perf_counter() - start < 1  # refused, not allocated
    same = digits_on_photos("test", 4, 32, seed=np.int64(3))
    assert torch.equal(same.images, digits_on_photos("test", 4, 32, seed=3).images)


def test_distractors_add_blue_digits_of_other_classes_and_keep_the_target():
    plain = digits_on_photos("test", n=40, seed=3)
    clutter = digits_on_photos("test", n=40, seed=3, distractors=2)
    # the digit to classify, its place, mask, box and photo are those without distractors
    for field in ("labels", "masks", "boxes", "alphas", "photo_ids", "crops", "transforms"):
        assert torch.equal(getattr(plain, field), getattr(clutter, field)), field
    assert clutter.distractors == 2 and plain.distractors == 0
    red = torch.tensor(D.TARGET_COLOUR)
    assert torch.equal(clutter.colours, red.expand(40, 3))
    # inside the target's strokes the image is (almost) pure red; blue ink lies elsewhere
    core = clutter.alphas[:, 0] > 0.99
    inside = clutter.images.permute(0, 2, 3, 1)[core]
    torch.testing.assert_close(inside, red.expand_as(inside), atol=0.02, rtol=0)
    blue = torch.tensor(D.DISTRACTOR_COLOUR)
    near_blue = (clutter.images.permute(0, 2, 3, 1) - blue).norm(dim=-1) < 0.1
    assert near_blue[~plain.masks].sum() > 40 * 20  # every image has blue strokes outside
    assert not (near_blue & (clutter.alphas[:, 0] > 0.5)).any()  # never on top of the target
    # the images change only where the distractors are drawn
    assert not torch.equal(plain.images, clutter.images)
    with pytest.raises(ValueError, match="distractors must be an int >= 0"):
        digits_on_photos("test", n=4, distractors=-1)
