"""The same guarantees on a CUDA device (run where a GPU exists; CPU machines skip this file)."""

from __future__ import annotations

import pytest
import torch

import attnviz
from attnviz.models import STCNN
from attnviz.train import fit, load_checkpoint, save_checkpoint, snapshot_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_capture_on_cuda_copies_to_cpu_by_default(tiny_net):
    model = tiny_net.cuda()
    x = torch.rand(4, 3, 16, 16, device="cuda")
    outs = {}
    h = model.se.register_forward_hook(lambda m, a, o: outs.update(se=(a[0], o)))
    with attnviz.capture(model) as rec:
        model(x)
    h.remove()
    w = rec["se"].weights
    assert w.device.type == "cpu"
    inp, out = outs["se"]
    torch.testing.assert_close(out.cpu(), inp.cpu() * w[:, :, None, None], atol=1e-6, rtol=0)
    with attnviz.capture(model, device=None, dtype=torch.float16) as rec16:
        model(x)
    assert rec16["se"].weights.device.type == "cuda" and rec16["se"].weights.dtype == torch.float16
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_stn_capture_and_training_on_cuda(tmp_path):
    model = STCNN((28, 28), (20, 20), width=8)
    images = torch.rand(256, 1, 28, 28)
    labels = (images[:, 0, :14].mean((1, 2)) > images[:, 0, 14:].mean((1, 2))).long()

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.images, self.labels = images, labels

        def __len__(self):
            return len(labels)

    h = fit(model, DS(), DS(), epochs=2, batch_size=64, device="cuda", progress=False,
            snapshot=snapshot_attention(images[:4], "theta"))  # fmt: skip
    assert h.device.startswith("cuda") and next(model.parameters()).is_cuda
    assert h.snapshot("stn").shape == (3, 4, 2, 3)
    save_checkpoint(tmp_path / "ck.pt", model, history=h)
    fresh = STCNN((28, 28), (20, 20), width=8)
    load_checkpoint(tmp_path / "ck.pt", fresh)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(images[:8]), model(images[:8].cuda()).cpu(), atol=1e-4, rtol=0)


def test_gradcam_on_cuda_matches_cpu_and_restores_state():
    from attnviz.cam import gradcam
    from attnviz.models import small_resnet

    model = small_resnet(10, attention="cbam", width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    cpu = gradcam(model, x, targets=[1, 2, 3, 4])
    model.cuda().train()
    grads = [p.grad for p in model.parameters()]
    gpu = gradcam(model, x.cuda(), targets=[1, 2, 3, 4])
    assert model.training and all(p.grad is g for p, g in zip(model.parameters(), grads))
    # cuDNN may use TF32 convolutions: maps (normalised to [0, 1]) agree to a few 1e-3
    torch.testing.assert_close(gpu.cpu(), cpu, atol=5e-3, rtol=0)


def test_torchvision_se_capture_on_cuda():
    import torchvision
    from torchvision.ops import SqueezeExcitation as TVSE

    model = torchvision.models.efficientnet_b0(weights=None).cuda().eval()
    with torch.no_grad(), attnviz.capture(model, features=True) as rec:
        out = model(torch.rand(2, 3, 64, 64, device="cuda"))
    assert out.is_cuda and len(rec) == sum(isinstance(m, TVSE) for m in model.modules())
    for r in rec.values():
        assert r.weights.device.type == "cpu" and r.features.shape[:2] == r.weights.shape
