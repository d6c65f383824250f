"""The same guarantees on every device: run on the CPU everywhere, and on CUDA where a GPU is.

Each test takes the device as a parameter, so the code paths are exercised in every CI run;
the CUDA cases run only on a machine with a GPU (they are reported as skipped elsewhere).
"""

from __future__ import annotations

import pytest
import torch

import attnviz
from attnviz.models import STCNN
from attnviz.train import fit, load_checkpoint, save_checkpoint, snapshot_attention

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_capture_copies_to_cpu_by_default(tiny_net, device):
    model = tiny_net.to(device)
    x = torch.rand(4, 3, 16, 16, device=device)
    outs = {}
    h = model.se.register_forward_hook(lambda m, a, o: outs.update(se=(a[0], o)))
    with attnviz.capture(model) as rec:
        model(x)
    h.remove()
    w = rec["se"].weights
    assert w.device.type == "cpu"
    inp, out = outs["se"]
    torch.testing.assert_close(out.cpu(), inp.cpu() * w[:, :, None, None], atol=1e-6, rtol=0)
    with attnviz.capture(model, records_on=None, dtype=torch.float16) as rec16:
        model(x)
    assert rec16["se"].weights.device.type == device and rec16["se"].weights.dtype == torch.float16
    assert all(c.ok for c in rec16.checks)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_stn_capture_training_and_checkpoint(tmp_path, device):
    model = STCNN((28, 28), (20, 20), width=8)
    images = torch.rand(256, 1, 28, 28)
    labels = (images[:, 0, :14].mean((1, 2)) > images[:, 0, 14:].mean((1, 2))).long()

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.images, self.labels = images, labels

        def __len__(self):
            return len(labels)

    h = fit(
        model,
        DS(),
        DS(),
        epochs=2,
        batch_size=64,
        device=device,
        progress=False,
        snapshot=snapshot_attention(images[:4], "theta"),
    )
    assert h.device.startswith(device) and next(model.parameters()).device.type == device
    assert h.snapshot("stn").shape == (3, 4, 2, 3)
    save_checkpoint(tmp_path / "ck.pt", model, history=h)
    fresh = STCNN((28, 28), (20, 20), width=8)
    load_checkpoint(tmp_path / "ck.pt", fresh)
    model.eval(), fresh.eval()
    with torch.no_grad():
        theirs = model(images[:8].to(device)).cpu()
    torch.testing.assert_close(fresh(images[:8]), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcam_matches_the_cpu_and_restores_state(device):
    from attnviz.cam import gradcam
    from attnviz.models import small_resnet

    model = small_resnet(10, attention="cbam", width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    cpu = gradcam(model, x, targets=[1, 2, 3, 4])
    model.to(device).train()
    grads = [p.grad for p in model.parameters()]
    maps = gradcam(model, x.to(device), targets=[1, 2, 3, 4])
    assert model.training and all(p.grad is g for p, g in zip(model.parameters(), grads))
    # cuDNN may use TF32 convolutions: maps (normalised to [0, 1]) agree to a few 1e-3
    torch.testing.assert_close(maps.cpu(), cpu, atol=5e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_torchvision_se_capture(device):
    import torchvision
    from torchvision.ops import SqueezeExcitation as TVSE

    model = torchvision.models.efficientnet_b0(weights=None).to(device).eval()
    with torch.no_grad(), attnviz.capture(model, features=True) as rec:
        out = model(torch.rand(2, 3, 64, 64, device=device))
    assert out.device.type == device
    assert len(rec) == sum(isinstance(m, TVSE) for m in model.modules())
    for r in rec.values():
        assert r.weights.device.type == "cpu" and r.features.shape[:2] == r.weights.shape
    assert all(c.ok for c in rec.checks)


@pytest.mark.parametrize("device", DEVICES)
def test_factored_attention_stays_on_the_device_and_gives_the_cpu_rows(device):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", img_size=64, depth=2).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad(), attnviz.capture(model) as cpu:
        model(x)
    model.to(device)
    with torch.no_grad(), attnviz.capture(model, records_on=None) as here:
        model(x.to(device))
    r = here["blocks.1.attn"]
    assert r.q.device.type == device and r.query_rows([0]).device.type == device
    assert all(c.ok for c in here.checks)
    # TF32 matmuls on some GPUs: rows agree to a few 1e-4
    want = cpu["blocks.1.attn"].token_attention("cls")
    torch.testing.assert_close(r.token_attention("cls").cpu(), want, atol=5e-4, rtol=0)
    rolled = attnviz.maps.rollout_map(here).cpu()
    torch.testing.assert_close(rolled, attnviz.maps.rollout_map(cpu), atol=5e-4, rtol=0)
