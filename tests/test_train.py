"""fit(): learns, is seeded, snapshots attention, and checkpoints atomically and safely."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import attnviz
from attnviz.models import STCNN, SmallCNN, TinyCNN, TutorialSTN, stn_localization
from attnviz.train import (
    History,
    evaluate,
    fit,
    load_checkpoint,
    pick_device,
    save_checkpoint,
    snapshot_attention,
)


class _Toy(torch.utils.data.Dataset):
    """Class = which half of the image is bright: learnable in a few steps."""

    def __init__(self, n=512, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.images = torch.rand(n, 1, size, size, generator=g) * 0.3
        half = size // 2
        for i, c in enumerate(self.labels.tolist()):
            self.images[i, 0, :, half * c : half * (c + 1)] += 0.7

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _tiny_stcnn():
    return STCNN(image_size=(16, 16), output_size=(12, 12), num_classes=2, width=4)


def test_fit_learns_and_returns_history_as_data():
    model = _tiny_stcnn()
    h = fit(
        model,
        _Toy(seed=0),
        _Toy(seed=1),
        epochs=4,
        batch_size=32,
        lr=3e-3,
        progress=False,
        device="cpu",
    )
    assert [e.epoch for e in h.epochs] == [0, 1, 2, 3, 4]
    assert h.final.test_acc > 0.95 and h.epochs[0].test_acc < 0.8
    assert h.train_seconds > 0 and h.device == "cpu"
    assert "| epoch |" in h.table()
    assert not model.training


def test_fit_is_seeded_and_accepts_a_data_loader_style_dataset():
    class ItemsOnly(torch.utils.data.Dataset):  # no images/labels attributes: DataLoader path
        def __init__(self):
            self.toy = _Toy()

        def __len__(self):
            return len(self.toy)

        def __getitem__(self, i):
            return self.toy[i]

    weights = []
    for _ in range(2):
        torch.manual_seed(123)  # different global state must not matter
        model = SmallCNN(1, 2, width=4)
        fit(model, ItemsOnly(), epochs=1, batch_size=64, seed=7, progress=False, device="cpu")
        weights.append(model.classifier.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_callable_train_gets_each_epoch_and_snapshots_theta():
    seen = []

    def data(epoch):
        seen.append(epoch)
        return _Toy(seed=epoch)

    model = _tiny_stcnn()
    probe = _Toy(8, seed=99).images
    h = fit(
        model,
        data,
        epochs=3,
        batch_size=64,
        progress=False,
        device="cpu",
        snapshot=snapshot_attention(probe, "theta"),
    )
    assert seen == [0, 1, 2]
    theta = h.snapshot("stn")
    assert theta.shape == (4, 8, 2, 3)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    torch.testing.assert_close(theta[0], identity.expand(8, 2, 3))
    assert not torch.equal(theta[-1], theta[0])  # the transformer moved
    with pytest.raises(KeyError, match="have"):
        h.snapshot("nope")


def test_checkpoint_round_trip(tmp_path):
    model = _tiny_stcnn()
    probe = _Toy(4).images
    h = fit(
        model,
        _Toy(),
        _Toy(seed=1),
        epochs=1,
        batch_size=64,
        progress=False,
        device="cpu",
        checkpoint=tmp_path / "ck.pt",
        snapshot=snapshot_attention(probe, "theta"),
    )
    fresh = _tiny_stcnn()
    state = load_checkpoint(tmp_path / "ck.pt", fresh)
    x = _Toy(8, seed=5).images
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    hist = state["history"]
    assert isinstance(hist, History) and hist.final.test_acc == h.final.test_acc
    torch.testing.assert_close(hist.snapshot("stn"), h.snapshot("stn"))
    assert state["optimizer"] is not None
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import attnviz.storage

    model = SmallCNN(1, 2, width=4)
    path = save_checkpoint(tmp_path / "ck.pt", model, note="first")
    before = path.read_bytes()

    def half_then_crash(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(attnviz.storage.torch, "save", half_then_crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, model, note="second")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["meta"] == {"note": "first"}


def test_meta_that_loading_would_refuse_is_refused_before_writing(tmp_path):
    model = SmallCNN(1, 2, width=4)
    for meta, where in [
        ({"source": tmp_path}, r"meta\['source'\] is a pathlib\.\w*Path"),
        ({"stats": {"mean": np.float32(1.0)}}, r"meta\['stats'\]\['mean'\] is a numpy"),
        ({"runs": [1, object()]}, r"meta\['runs'\]\[1\] is a builtins.object"),
    ]:
        with pytest.raises(TypeError, match=where):
            save_checkpoint(tmp_path / "ck.pt", model, **meta)
    assert not (tmp_path / "ck.pt").exists()
    ok = save_checkpoint(
        tmp_path / "ck.pt", model, source=str(tmp_path), sizes=(1, 2), t=torch.ones(2)
    )
    assert load_checkpoint(ok)["meta"]["sizes"] == (1, 2)
    assert oct(ok.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": SmallCNN(1, 2, 4).state_dict(), "extra": _Evil()}, path)
    with pytest.raises(ValueError, match="refuses"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_plain_state_dict_loads_too(tmp_path):
    model = SmallCNN(1, 2, width=4)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    fresh = SmallCNN(1, 2, width=4)
    load_checkpoint(tmp_path / "sd.pt", fresh)
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)


def test_pick_device_and_bad_arguments():
    assert pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else pick_device().type
    assert pick_device().type == expected
    with pytest.raises(ValueError, match="optimizer"):
        fit(SmallCNN(1, 2, 4), _Toy(), epochs=1, optimizer="lbfgs", progress=False, device="cpu")
    with pytest.raises(ValueError, match="positive"):
        fit(SmallCNN(1, 2, 4), _Toy(), epochs=0, progress=False, device="cpu")


@pytest.mark.parametrize("size", [(28, 28), (42, 42), (60, 60)])
def test_models_are_sized_for_their_input(size):
    x = torch.rand(2, 1, *size)
    assert STCNN(size, (28, 28))(x).shape == (2, 10)
    assert SmallCNN()(x).shape == (2, 10)
    assert TutorialSTN(size)(x).shape == (2, 10)
    loc = stn_localization(1, size)
    assert isinstance(loc[-2], nn.Linear) and loc(x).shape == (2, 64)


def test_stcnn_starts_as_the_identity_transform():
    model = STCNN((42, 42), None).eval()
    x = torch.rand(3, 1, 42, 42)
    torch.testing.assert_close(model.stn(x), x, atol=1e-5, rtol=0)  # up to interpolation
    data = _Toy(64, size=42)
    loss, acc = evaluate(model, data)
    # the identity transform hands the classifier the image itself: its own logits
    with torch.no_grad():
        logits = model.cnn(data.images)
    assert acc == (logits.argmax(1) == data.labels).float().mean().item()
    assert loss == pytest.approx(
        torch.nn.functional.cross_entropy(logits, data.labels).item(), abs=1e-5
    )


@pytest.mark.parametrize("transform", ["affine", "attention"])
def test_stcnn_heatmap_head_starts_where_it_is_told(transform):
    x = torch.rand(3, 1, 60, 60)
    model = STCNN((60, 60), None, transform=transform, head="heatmap").eval()
    torch.testing.assert_close(model.stn(x), x, atol=1e-5, rtol=0)
    zoomed = STCNN((60, 60), (12, 12), transform=transform, head="heatmap", init_scale=0.5)
    with attnviz.capture(zoomed) as rec:
        assert zoomed(x).shape == (3, 10)
    theta = rec["stn"].theta
    torch.testing.assert_close(theta, torch.tensor([[0.5, 0, 0], [0, 0.5, 0]]).expand(3, 2, 3))
    # the heat map is a hookable B x h x w probability map over f_loc's 15 x 15 cells
    seen = []
    zoomed.stn.head.heatmap.register_forward_hook(lambda m, a, out: seen.append(out))
    zoomed(x)
    assert seen[0].shape == (3, 15, 15)
    torch.testing.assert_close(seen[0].sum(dim=(1, 2)), torch.ones(3))


def test_pooled_classifier_keeps_a_coarse_layout():
    cnn = SmallCNN(pool=3)
    assert cnn.classifier.in_features == 64 * 9
    assert cnn(torch.rand(2, 1, 42, 42)).shape == (2, 10)
    assert STCNN((42, 42), (28, 28), pool=3)(torch.rand(2, 1, 42, 42)).shape == (2, 10)
    with pytest.raises(ValueError, match="pool"):
        SmallCNN(pool=0)
    with pytest.raises(ValueError, match="head must be"):
        STCNN(head="conv")
    with pytest.raises(ValueError, match="init_scale needs head='heatmap'"):
        STCNN(init_scale=0.5)


def test_tiny_cnn_is_the_tutorial_classifier_sized_for_its_input():
    for size in [(16, 16), (28, 28), (42, 42), (20, 30)]:
        assert TinyCNN(size)(torch.rand(2, 1, *size)).shape == (2, 10)
    # the tutorial's layers: conv 10 and 20 (5 x 5), FC 50, no batch-norm, no dropout
    net = TinyCNN((28, 28))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(10, (5, 5)), (20, (5, 5))]
    assert net.classifier[0].in_features == 320 and net.classifier[0].out_features == 50
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)) for m in net.modules())
    st = STCNN((42, 42), (20, 20), classifier="tiny", head="heatmap")
    assert isinstance(st.cnn, TinyCNN) and st(torch.rand(2, 1, 42, 42)).shape == (2, 10)
    with pytest.raises(ValueError, match="at least 16 x 16"):
        TinyCNN((12, 12))
    with pytest.raises(ValueError, match="classifier must be"):
        STCNN(classifier="vgg")


def test_fit_adds_the_auxiliary_losses_modules_set():
    """A module's ``auxiliary_loss`` (set in its forward) joins the classification loss:
    one full-batch SGD step equals the hand-computed step on CE + the auxiliary loss."""

    class Decayed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.auxiliary_loss = None

        def forward(self, x):
            self.auxiliary_loss = 10.0 * self.fc.weight.pow(2).sum()
            return self.fc(x.flatten(1))

    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    torch.manual_seed(0)
    model = Decayed()
    w = model.fc.weight.detach().clone().requires_grad_()
    b = model.fc.bias.detach().clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 10.0 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    fit(
        model,
        torch.utils.data.TensorDataset(x, y),
        epochs=1,
        batch_size=64,
        lr=0.1,
        optimizer="sgd",
        schedule=None,
        progress=False,
    )
    torch.testing.assert_close(model.fc.weight.detach(), w.detach() - 0.1 * gw)
    torch.testing.assert_close(model.fc.bias.detach(), b.detach() - 0.1 * gb)
