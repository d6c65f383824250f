"""The scores of attnviz.metrics.faithfulness give the values their definitions imply on
deliberately perfect and useless maps, so none of them can silently invert."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnviz.data import digits_on_photos
from attnviz.metrics import center_prior
from attnviz.metrics.faithfulness import (
    CENTRE,
    RANDOM,
    bootstrap_interval,
    energy_in_mask,
    mass_jaccard,
    perturbation_curves,
    perturbed,
    pointing_hits,
    pointing_point,
    random_maps,
    score_methods,
)


@pytest.fixture(scope="module")
def digits():
    return digits_on_photos("test", n=40, seed=3)


def test_the_mask_itself_is_a_perfect_map(digits):
    m = digits.masks
    perfect = m.double()
    assert pointing_hits(perfect, m).all()
    assert pointing_hits(perfect, m, tolerance=4).all()
    assert torch.allclose(energy_in_mask(perfect, m), torch.ones(len(m), dtype=torch.float64))
    assert torch.allclose(mass_jaccard(perfect, m), torch.ones(len(m), dtype=torch.float64))
    # the inverted mask is as wrong as a map can be
    wrong = (~m).double()
    assert not pointing_hits(wrong, m).any()
    assert (energy_in_mask(wrong, m) == 0).all() and (mass_jaccard(wrong, m) == 0).all()


def test_a_constant_map_scores_exactly_the_centre_baseline_and_the_mask_area(digits):
    m = digits.masks
    area = m.double().mean(dim=(1, 2))
    for side in (8, 64):  # at any resolution
        flat = torch.full((len(m), side, side), 0.3)
        centre = pointing_point(center_prior(len(m), 64), (64, 64))
        assert torch.equal(pointing_point(flat, (64, 64)), centre)
        for tol in (0, 4):
            assert torch.equal(
                pointing_hits(flat, m, tolerance=tol),
                pointing_hits(center_prior(len(m), side), m, tolerance=tol),
            )
        assert torch.allclose(energy_in_mask(flat, m), area)
        assert torch.allclose(mass_jaccard(flat, m), area)  # selects the whole image
    assert pointing_point(flat, (64, 64))[0].tolist() == [31.5, 31.5]


def test_a_random_map_scores_about_the_mask_area(digits):
    m = digits.masks
    noise = random_maps(len(m), (64, 64), seed=1)
    area = float(m.double().mean())
    assert abs(float(energy_in_mask(noise, m).mean()) - area) < 0.01
    assert float(pointing_hits(noise, m).double().mean()) < 0.25


def test_pointing_tolerance_is_a_distance_to_the_object():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 8, 8] = True  # pixel square [8, 9] x [8, 9]
    one_hot = torch.zeros(1, 16, 16)
    one_hot[0, 8, 12] = 1  # centre (12.5, 8.5): 3.5 px right of the square
    assert not pointing_hits(one_hot, mask, tolerance=3.4).item()
    assert pointing_hits(one_hot, mask, tolerance=3.5).item()
    with pytest.raises(ValueError, match="tolerance"):
        pointing_hits(one_hot, mask, tolerance=-1)


def test_mass_jaccard_keeps_sixty_percent_of_the_mass():
    m = torch.tensor([[[4.0, 3.0, 2.0, 1.0]]])  # total 10: 4 + 3 >= 6
    mask = torch.tensor([[[True, True, False, False]]])
    assert mass_jaccard(m, mask).item() == 1.0
    assert mass_jaccard(m, mask, mass=0.8).item() == pytest.approx(2 / 3)  # 4 + 3 + 2


CHECKER = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2 - 1.0


class SquareModel(nn.Module):
    """Class 0's logit reads a checkerboard in the central 4 x 4 square of a 16 x 16
    image: the square's fine pattern is all that matters to it (blur, or filling the
    square with 0, erases it)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x[:, :, 6:10, 6:10] * CHECKER).mean(dim=(1, 2, 3))
        return torch.stack([40 * inside - 5 + self.w, torch.zeros_like(inside)], dim=1)


def test_removing_the_object_first_drops_the_score_first():
    n = 6
    images = torch.rand(n, 3, 16, 16)
    images[:, :, 6:10, 6:10] = (CHECKER > 0).float()
    mask = torch.zeros(n, 16, 16, dtype=torch.bool)
    mask[:, 6:10, 6:10] = True
    labels = torch.zeros(n, dtype=torch.long)
    model = SquareModel().eval()
    good = perturbation_curves(model, images, labels, mask.double())
    bad = perturbation_curves(model, images, labels, (~mask).double())
    rand = perturbation_curves(model, images, labels, random_maps(n, (16, 16)))
    # deletion of the square first: the probability falls at once (curve step 1 = 10%)
    assert (good["deletion"][:, 1] < bad["deletion"][:, 1]).all()
    assert (good["deletion_auc"] < rand["deletion_auc"]).all()
    assert (rand["deletion_auc"] < bad["deletion_auc"]).all()
    assert (good["insertion_auc"] > bad["insertion_auc"]).all()
    assert (good["positive_auc"] < bad["positive_auc"]).all()
    assert (good["negative_auc"] > good["positive_auc"]).all()
    assert (good["negative_auc"] >= rand["negative_auc"]).all()
    # the untouched image and the fully removed one are the same for every map
    assert torch.allclose(good["deletion"][:, 0], bad["deletion"][:, 0])
    assert torch.allclose(good["deletion"][:, -1], bad["deletion"][:, -1])


def test_a_constant_map_perturbs_like_the_tie_breaking_random_order():
    images = torch.rand(4, 3, 16, 16)
    labels = torch.zeros(4, dtype=torch.long)
    model = SquareModel().eval()
    flat = perturbation_curves(model, images, labels, torch.ones(4, 4, 4), seed=5)
    again = perturbation_curves(model, images, labels, torch.zeros(4, 16, 16), seed=5)
    assert torch.equal(flat["deletion"], again["deletion"])


def test_score_methods_adds_the_baselines_and_intervals(digits):
    m = digits.masks
    s = score_methods({"mask": m.double(), "flat": torch.ones(len(m), 8, 8)}, m)
    assert list(s.summary) == ["mask", "flat", CENTRE, RANDOM]
    assert s.summary["mask"]["pointing"][0] == 1.0
    assert s.summary["flat"]["pointing"] == s.summary[CENTRE]["pointing"]
    assert s.best("energy") == "mask"
    table = s.table()
    assert "| mask | 1.000 [1.00, 1.00]" in table and "60%-mass Jaccard" in table
    with pytest.raises(ValueError, match="together"):
        score_methods({"mask": m.double()}, m, model=nn.Linear(1, 1))
    with pytest.raises(ValueError, match="one map per image"):
        score_methods({"short": m[:3].double()}, m)


def test_bootstrap_interval_brackets_the_mean():
    v = torch.tensor([0.0, 1.0] * 50)
    mean, lo, hi = bootstrap_interval(v)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.25
    assert bootstrap_interval(torch.ones(10)) == (1.0, 1.0, 1.0)


def test_perturbed_shows_the_curves_images():
    images = torch.rand(3, 3, 16, 16)
    images[:, :, 6:10, 6:10] = (CHECKER > 0).float()
    labels = torch.zeros(3, dtype=torch.long)
    maps = random_maps(3, (4, 4), seed=2)
    model = SquareModel().eval()
    curves = perturbation_curves(model, images, labels, maps, fractions=(0, 0.3, 1))
    for kind in ("deletion", "insertion"):
        x = perturbed(images, maps, 0.3, kind=kind)
        prob = model(x).softmax(1)[:, 0].double()
        assert torch.allclose(prob, curves[kind][:, 1])
    bright = torch.rand(3, 3, 16, 16) + 0.5
    removed = perturbed(bright, maps, 0.25, kind="deletion") != bright
    assert removed.any(dim=1).flatten(1).sum(1).tolist() == [64, 64, 64]  # 25% of 256
