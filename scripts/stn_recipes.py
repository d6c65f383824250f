"""Which recipe makes the transformer undo rotation? The tutorial's classifier with our loop."""

import torch
from torch import nn

import attnviz
from attnviz.data import distorted_mnist
from attnviz.metrics import transform_agreement
from attnviz.models import TutorialSTN
from attnviz.train import fit, stn_param_groups

test = distorted_mnist("RTS", "test", seed=0)
train = {e: distorted_mnist("RTS", "train", seed=e) for e in range(60)}
for label, with_stn, epochs, stn_lr in [("tutorial net + ST", True, 30, 3e-4),
                                        ("tutorial net, no ST", False, 30, 3e-4),
                                        ("tutorial net + ST, stn 1e-3", True, 30, 1e-3),
                                        ("tutorial net + ST, 60 ep", True, 60, 3e-4)]:  # fmt: skip
    torch.manual_seed(0)
    m = TutorialSTN((42, 42))
    if not with_stn:
        m.stn = nn.Identity()
    h = fit(m, lambda e: train[e % 60], test, epochs=epochs, progress=False,
            param_groups=stn_param_groups(m, lr=3e-3, stn_lr=stn_lr))  # fmt: skip
    extra = ""
    if with_stn:
        with torch.no_grad(), attnviz.capture(m) as rec:
            m(test.images.cuda())
        a = transform_agreement(rec["stn"].theta, test.transforms)
        extra = f"rot corr {a['rotation_corr']:+.2f} zoom corr {a['zoom_corr']:+.2f}"
    print(f"{label:28s} acc {h.final.test_acc:.2%} ({h.train_seconds:.0f} s) {extra}", flush=True)
