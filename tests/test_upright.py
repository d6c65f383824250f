"""The two-stage spatial transformer: window, then rotation, composed exactly, captured whole."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import attnviz
from attnviz import maps
from attnviz.data import distorted_mnist
from attnviz.models import STCNN
from attnviz.modules import TwoStageTransformer
from attnviz.modules.stn import ComposeTheta
from attnviz.recipes import UPRIGHT
from attnviz.records import TwoStageTransformRecord
from attnviz.train import fit_upright
from attnviz.widgets import STNInspector

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _turned(model: STCNN, angle: float) -> STCNN:
    """A model whose angle head answers ``angle`` for every crop, and whose window moves."""
    with torch.no_grad():
        last = model.stn.angle.regress[-1]
        last.bias.copy_(torch.tensor([math.cos(angle), math.sin(angle)]) * 2.5)
        model.stn.head.score.weight.normal_()  # a window that depends on the image
        model.stn.head.linear[-1].bias.fill_(0.6)
    return model


def test_both_stages_start_as_the_identity():
    torch.manual_seed(0)
    model = STCNN.for_upright().eval()
    x = torch.rand(4, 1, 42, 42)
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(x)
    r = rec["stn"]
    assert isinstance(r, TwoStageTransformRecord)
    torch.testing.assert_close(r.theta, IDENTITY.expand(4, 2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.window, IDENTITY.expand(4, 2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.rotation, torch.eye(2).expand(4, 2, 2), atol=1e-6, rtol=0)
    assert r.angle.abs().max() < 1e-6


def test_the_composed_theta_is_the_window_times_the_rotation():
    torch.manual_seed(1)
    model = _turned(STCNN.for_upright(), 0.7).eval()
    x = distorted_mnist("RTS", "test", seed=0).images[:8]
    with torch.no_grad(), attnviz.capture(model, verify="raise") as rec:
        model(x)
    r = rec["stn"]
    w, rot = r.window, r.rotation
    composed = torch.cat([w[:, :, :2] @ rot, w[:, :, 2:]], dim=2)  # [A_1 R | t_1]
    torch.testing.assert_close(r.theta, composed, atol=1e-6, rtol=0)
    torch.testing.assert_close(r.angle, torch.full((8,), 0.7), atol=1e-6, rtol=0)
    assert not torch.allclose(w, IDENTITY.expand(8, 2, 3), atol=1e-3)  # the window moved
    # every piece is what the module used: the crop the angle head read, the output
    crop = F.grid_sample(
        x, F.affine_grid(w, [8, 1, 28, 28], align_corners=False), align_corners=False
    )
    torch.testing.assert_close(r.crop, crop, atol=1e-6, rtol=0)
    out = F.grid_sample(
        x, F.affine_grid(r.theta, [8, 1, 28, 28], align_corners=False), align_corners=False
    )
    torch.testing.assert_close(r.output, out, atol=1e-6, rtol=0)
    assert {c.what for c in rec.checks} >= {
        "theta == [window's A @ rotation | window's t]",
        "rotation is a rotation",
        "crop == input sampled at the window's grid",
    }


def test_a_wrong_composition_fails_its_check(monkeypatch):
    real = ComposeTheta.forward
    monkeypatch.setattr(ComposeTheta, "forward", lambda self, w, r: real(self, w, r) + 0.1)
    model = _turned(STCNN.for_upright(), 0.3).eval()
    with pytest.raises(attnviz.FaithfulnessError, match="window's A @ rotation"):
        with torch.no_grad(), attnviz.capture(model, verify="raise"):
            model(torch.rand(2, 1, 42, 42))


def test_the_consistency_loss_at_the_identity_is_four_minus_four_cos():
    """At initialisation the head answers I for every crop, so the loss for a turn D by
    angle a is ||I - D^T||^2 = 4 - 4 cos a; the turns are the module's own random draws."""
    torch.manual_seed(0)
    stn = TwoStageTransformer(torch.nn.Conv2d(1, 32, 3, padding=1), 32, consistency=0.5)
    x = torch.rand(6, 1, 28, 28)
    stn.eval()
    stn(x)
    assert stn.auxiliary_loss is None  # only in training
    stn.train()
    torch.manual_seed(5)
    stn(x)
    torch.manual_seed(5)
    a = (torch.rand(6) * 2 - 1) * math.pi
    expected = 0.5 * (4 - 4 * a.cos()).mean()
    torch.testing.assert_close(stn.auxiliary_loss, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="consistency"):
        TwoStageTransformer(torch.nn.Conv2d(1, 32, 3), 32, consistency=-1)


def test_fit_upright_freezes_the_classifier_while_the_transformer_learns():
    torch.manual_seed(0)
    model = STCNN.for_upright()
    before = {k: v.clone() for k, v in model.cnn.state_dict().items()}
    stn_before = model.stn.angle.regress[0].weight.clone()
    small = distorted_mnist("RTS", "train", seed=3)
    small.images, small.labels = small.images[:128], small.labels[:128]
    h = fit_upright(model, small, None, pre_epochs=0, stn_epochs=1, joint_epochs=0, progress=False)
    assert list(h.phases) == ["transformer"] and h.train_seconds > 0
    for k, v in model.cnn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.stn.angle.regress[0].weight, stn_before)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match=".stn and .cnn"):
        fit_upright(torch.nn.Linear(2, 2), small)


def test_recipes_build_for_rts_and_r():
    assert set(UPRIGHT) == {"RTS", "R"}
    r = UPRIGHT["R"].build()
    assert r.stn.consistency == 1.0
    assert r(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # the recipes say what the README's upright table measured: phases, sizes, data
    assert UPRIGHT["R"].train == (
        "fit_upright",
        {"pre_epochs": 14, "stn_epochs": 14, "joint_epochs": 2},
    )
    assert UPRIGHT["R"].data == "R" and UPRIGHT["RTS"].data == "RTS"
    rts = UPRIGHT["RTS"].build()
    assert rts.stn.consistency == 0.0 and tuple(rts.stn.output_size) == (28, 28)
    assert rts(torch.rand(2, 1, 42, 42)).shape == (2, 10)


def test_upright_digits_are_nearly_upright():
    d = distorted_mnist("upright", "test", seed=0)
    parts = maps.decompose_theta(torch.linalg.inv(d.transforms.double())[:, :2])
    assert parts["rotation"].abs().max() <= math.radians(5) + 1e-6
    assert d.images.shape[-2:] == (28, 28)


def test_the_inspector_draws_both_windows_and_the_angle():
    torch.manual_seed(2)
    model = _turned(STCNN.for_upright(), -0.5).eval()
    data = distorted_mnist("RTS", "test", seed=0)
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(data.images[:3])
    r = rec["stn"]
    app = STNInspector(data.images[:3], r.theta, windows=r.window, output_size=(28, 28))
    s = app.current()
    assert s["angle"] == pytest.approx(-0.5, abs=1e-5)
    torch.testing.assert_close(s["window_corners"], maps.theta_corners(r.window[0], (42, 42))[0])
    picture = np.asarray(Image.open(io.BytesIO(app.pictures()["input"])).convert("RGB"))
    blue = (picture[..., 0] < 40) & (picture[..., 1] > 150) & (picture[..., 2] > 220)
    assert blue.sum() > 20  # the window's outline
    assert "second stage" in app.info
    with pytest.raises(ValueError, match="thetas must be|windows must have"):
        STNInspector(data.images[:3], r.theta, windows=r.window[:2])
    app.close()
