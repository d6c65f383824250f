"""The deletion slider shows the images the deletion and insertion scores fed the model."""

from __future__ import annotations

import pytest
import torch

from attnviz import attribution
from attnviz.models import SmallViT, small_resnet
from attnviz.widgets import DeletionExplorer


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    models = {
        "vit": SmallViT(32, 8, dim=16, depth=2, heads=2).eval(),
        "cbam": small_resnet(10, attention="cbam", width=8).eval(),
    }
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[:, 4:12, 8:20] = True
    c = attribution.compare(models, x, labels, masks, fractions=(0, 0.25, 0.5, 1))
    return c, models, x, labels


def test_each_step_shows_what_the_curve_measured(setup):
    c, models, x, labels = setup
    app = DeletionExplorer(c, models, x, labels)
    assert app.controls["model"].options == ("vit", "cbam")
    for model in ("vit", "cbam"):
        for kind in ("deletion", "insertion"):
            for step in (0, 2, 3):
                with app._hold():
                    app.controls["model"].value = model
                    app.controls["kind"].value = kind
                    app.controls["step"].value = step
                    app.controls["image"].value = 2
                now = app.current()
                assert now["fraction"] == (0, 0.25, 0.5, 1)[step]
                assert set(now["probability"]) == set(c.scores[model].summary)
                for method, p in now["probability"].items():
                    assert p == pytest.approx(now["curve"][method], abs=1e-5)
    picture = app.pictures()["rows"]
    assert picture[:4] == b"\x89PNG" and "row 1:" in app.info
    app.close()


def test_bad_input_is_refused(setup):
    c, models, x, labels = setup
    with pytest.raises(ValueError, match="missing"):
        DeletionExplorer(c, {"vit": models["vit"]}, x, labels)
    with pytest.raises(ValueError, match="scored 4 images"):
        DeletionExplorer(c, models, x[:2], labels[:2])
