"""Explanation methods agree with their papers' equations computed by hand, and the
comparison puts them side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnviz import attribution
from attnviz.cam import gradcam
from attnviz.models import SmallViT, small_resnet


def _vit(registers: int = 1) -> SmallViT:
    torch.manual_seed(0)
    return SmallViT(16, 4, dim=16, depth=3, heads=2, registers=registers).double().eval()


def _by_hand(model: SmallViT, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ViT's forward written out from its weights: logits and every block's A."""
    t = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=4)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(len(x), -1, -1), t], 1) + model.pos_embed
    if model.reg_token is not None:
        t = torch.cat([t[:, :1], model.reg_token.expand(len(x), -1, -1), t[:, 1:]], 1)
    attns = []
    for blk in model.blocks:
        h = F.layer_norm(t, (t.shape[-1],), blk.norm1.weight, blk.norm1.bias)
        qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        heads, d = blk.attn.num_heads, t.shape[-1] // blk.attn.num_heads
        q, k, v = (p.reshape(len(x), -1, heads, d).transpose(1, 2) for p in qkv.chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / np.sqrt(d), dim=-1)
        attns.append(a)
        o = (a @ v).transpose(1, 2).reshape(t.shape)
        t = t + o @ blk.attn.proj.weight.T + blk.attn.proj.bias
        h = F.layer_norm(t, (t.shape[-1],), blk.norm2.weight, blk.norm2.bias)
        t = t + blk.mlp(h)
    t = F.layer_norm(t, (t.shape[-1],), model.norm.weight, model.norm.bias)
    return model.head(t[:, 0]), attns


def test_the_by_hand_forward_is_the_model():
    model, x = _vit(), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(_by_hand(model, x)[0], model(x), atol=1e-12)


def test_rollout_equals_abnar_and_zuidema_by_hand():
    model, x = _vit(), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    maps = attribution.explain_maps(model, x, methods=["rollout"])
    _, attns = _by_hand(model, x)
    for b in range(len(x)):
        n = attns[0].shape[-1]
        roll = np.eye(n)
        for a in attns:  # A' = (I + mean_h A) / 2, rows renormalised; R = A'_L ... A'_1
            mixed = 0.5 * np.eye(n) + 0.5 * a[b].mean(0).detach().numpy()
            mixed /= mixed.sum(1, keepdims=True)
            roll = mixed @ roll
        expected = roll[0, 2:].reshape(4, 4)  # cls row, patches after cls and reg1
        assert np.abs(maps["attention rollout"][b].numpy() - expected).max() <= 1e-6


def test_gradient_relevance_equals_chefer_2021_by_hand():
    model, x = _vit(), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([1, 4, 7])
    maps = attribution.explain_maps(model, x, targets, methods=["relevance"])
    logits, attns = _by_hand(model, x)
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), attns)
    for b in range(len(x)):
        n = attns[0].shape[-1]
        r = np.eye(n)
        for a, g in zip(attns, grads):  # A-bar = E_h[(grad A * A)^+]; R += A-bar R
            abar = np.maximum(g[b].numpy() * a[b].detach().numpy(), 0).mean(0)
            r = r + abar @ r
        expected = r[0, 2:].reshape(4, 4)
        got = maps["relevance (Chefer 2021)"][b].double().numpy()
        assert np.abs(got - expected).max() <= 1e-6
    # the model is left as it was: no gradients on its parameters
    assert all(p.grad is None for p in model.parameters())


def test_gradient_relevance_leaves_mixed_train_and_eval_flags_as_they_were():
    """model.train(was_training) would set every module's flag to the root's."""
    model, x = _vit(), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    model.train()
    model.blocks[1].eval()  # a frozen block inside a training model
    flags = {name: m.training for name, m in model.named_modules()}
    attribution.gradient_relevance(model, x, torch.tensor([1, 2]))
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert not model.blocks[1].training and model.training and model.blocks[0].training


def test_relevance_reads_timm_vits_with_the_fused_kernel_off_on_rectangular_grids():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=(16, 32),
        patch_size=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=3,
        reg_tokens=2,
    ).eval()
    x = torch.rand(2, 3, 16, 32)
    maps = attribution.gradient_relevance(vit, x, torch.tensor([0, 2]))
    assert maps.shape == (2, 4, 8) and (maps >= 0).all()
    assert all(
        m.fused_attn == timm.layers.use_fused_attn()
        for m in vit.modules()
        if hasattr(m, "fused_attn")
    )


def test_raw_attention_received_and_grad_cam_are_the_records_and_the_package():
    model, x = _vit(registers=0), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    model = model.float()
    maps = attribution.explain_maps(model, x.float(), torch.tensor([2, 3]))
    _, attns = _by_hand(model.double(), x)
    model.float()
    last = attns[-1].float()
    expected = {
        "attention (head mean)": last[:, :, 0, 1:].mean(1),
        "attention (head 0)": last[:, 0, 0, 1:],
        "attention received": last[:, :, 1:, 1:].mean(1).mean(1),
    }
    for title, want in expected.items():
        assert torch.allclose(maps[title], want.reshape(2, 4, 4), atol=1e-6)
    assert torch.equal(maps["Grad-CAM"], gradcam(model, x.float(), targets=[2, 3]))


def test_every_family_gets_its_methods_and_the_rest_are_refused():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    cbam = small_resnet(10, attention="cbam", width=8).eval()
    assert attribution.methods_for(cbam, x) == ["gradcam", "cbam", "se"]
    se = small_resnet(10, attention="se", width=8).eval()
    assert attribution.methods_for(se, x) == ["gradcam", "se"]
    nl = small_resnet(10, attention="nonlocal", width=8).eval()
    assert attribution.methods_for(nl, x) == ["gradcam", "nonlocal"]
    maps = attribution.explain_maps(cbam, x, torch.tensor([0, 1]))
    kinds = {"Grad-CAM", "CBAM spatial map", "channel-weighted activation"}
    assert {t.split(" (")[0] for t in maps} == kinds
    with pytest.raises(ValueError, match="rollout"):
        attribution.explain_maps(cbam, x, methods=["rollout"])
    with pytest.raises(ValueError, match="attn_drop"):
        attribution.gradient_relevance(cbam, x, torch.tensor([0, 1]))


def test_calibration_picks_on_its_own_images_and_compare_scores_every_model():
    torch.manual_seed(0)
    vit = SmallViT(32, 8, dim=16, depth=2, heads=2, registers=2).eval()
    se = small_resnet(10, attention="se", width=8).eval()
    x, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 10
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 10:22] = True
    choices = attribution.calibrate(vit, x, masks)
    block, head = choices["attention_best"]
    assert block.startswith("blocks.") and 0 <= head < 2
    c = attribution.compare(
        {"vit": vit, "se": se}, x, labels, masks, calibration=(x, masks), fractions=(0, 0.5, 1)
    )
    table = c.table()
    assert "| vit: attention (best head:" in table and "| se: centre baseline |" in table
    assert set(c.scores["vit"].summary) >= {"attention rollout", "relevance (Chefer 2021)"}
    assert all(v > 0 for v in c.cost["vit"].values())
    assert c.winners("energy")["se"].startswith(("Grad-CAM", "channel-weighted"))
    wins = c.winners_table(["energy"]).splitlines()
    assert len(wins) == 4 and wins[3].startswith(f"| se | {c.accuracy['se']:.2%} | energy in mask")


def test_rollout_streamed_over_several_chunks_equals_abnar_and_zuidema_by_hand():
    """The rollout row is streamed 256 query rows at a time; each chunk's identity (the
    residual) sits on the diagonal of the WHOLE matrix, at column start + i, not i: 578
    tokens (cls, reg1, 24 x 24 patches) make three chunks, 256 + 256 + 66."""
    torch.manual_seed(0)
    model = SmallViT(96, 4, dim=16, depth=3, heads=2, registers=1).double().eval()
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        _, attns = _by_hand(model, x)
    n = attns[0].shape[-1]
    assert n == 578 and n > 2 * 256 and n % 256
    rollout = attribution.explain_maps(model, x, methods=["rollout"])["attention rollout"]
    for b in range(len(x)):
        roll = np.eye(n)
        for a in attns:  # A' = (I + mean_h A) / 2, rows renormalised; R = A'_L ... A'_1
            mixed = 0.5 * np.eye(n) + 0.5 * a[b].mean(0).numpy()
            mixed /= mixed.sum(1, keepdims=True)
            roll = mixed @ roll
        expected = roll[0, 2:].reshape(24, 24)  # cls row, patches after cls and reg1
        np.testing.assert_allclose(rollout[b].numpy(), expected, rtol=0, atol=1e-8)


def _chefer_by_hand(model: SmallViT, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """Chefer et al. 2021 relevance of ``classes`` (one per image), from the by-hand forward:
    A-bar = E_h[(grad A * A)^+], R = I, R += A-bar R; the cls row over the patches."""
    logits, attns = _by_hand(model, x)
    grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), attns)
    out = []
    for b in range(len(x)):
        n = attns[0].shape[-1]
        r = np.eye(n)
        for a, g in zip(attns, grads):
            r = r + np.maximum(g[b].numpy() * a[b].detach().numpy(), 0).mean(0) @ r
        out.append(r[0, 2:].reshape(4, 4))
    return np.stack(out)


def test_compare_explains_the_true_class_not_the_predicted_one():
    """compare's maps answer "why this label": the relevance of the labels given (Chefer
    et al., by hand), on images the model predicts as another class."""
    model, x = _vit(), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    labels = (predicted + 3) % 10  # every image labelled with a class the model did not pick
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    c = attribution.compare(
        {"vit": model}, x, labels, masks, methods={"vit": ["relevance"]}, fractions=(0, 1)
    )
    assert c.accuracy["vit"] == 0.0
    got = c.maps["vit"]["relevance (Chefer 2021)"].double().numpy()
    truth, guess = _chefer_by_hand(model, x, labels), _chefer_by_hand(model, x, predicted)
    assert np.abs(truth - guess).max() > 0.2 * np.abs(truth).max()  # the classes' maps differ
    np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-9)
