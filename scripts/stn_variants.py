"""Does the transformer learn to undo the distortion? Rotation and zoom agreement per recipe."""

import math

import torch

import attnviz
from attnviz.data import distorted_mnist
from attnviz.maps import decompose_theta
from attnviz.models import STCNN
from attnviz.train import fit, stn_param_groups

test = distorted_mnist("RTS", "test", seed=0)
ideal = decompose_theta(torch.linalg.inv(test.transforms)[:, :2])
train = {e: distorted_mnist("RTS", "train", seed=e) for e in range(40)}


def agreement(model):
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(test.images.cuda())
    got = decompose_theta(rec["stn"].theta)
    rot = torch.corrcoef(torch.stack([got["rotation"], ideal["rotation"]]))[0, 1].item()
    zoom = torch.corrcoef(torch.stack([got["zoom"], ideal["zoom"]]))[0, 1].item()
    return rot, zoom, got["rotation"].abs().mean().item() * 180 / math.pi


for label, out, lr, stn_lr, width, epochs in [
    ("base", 28, 3e-3, 3e-4, 16, 20),
    ("stn 1e-3", 28, 3e-3, 1e-3, 16, 20),
    ("stn 3e-3", 28, 3e-3, 3e-3, 16, 20),
    ("out 20", 20, 3e-3, 1e-3, 16, 20),
    ("width 8", 28, 3e-3, 1e-3, 8, 20),
    ("stn 1e-3, 40 ep", 28, 3e-3, 1e-3, 16, 40),
]:
    torch.manual_seed(0)
    m = STCNN((42, 42), (out, out), width=width)
    h = fit(m, lambda e: train[e % 40], test, epochs=epochs, progress=False,
            param_groups=stn_param_groups(m, lr=lr, stn_lr=stn_lr))  # fmt: skip
    rot, zoom, mean_rot = agreement(m)
    print(f"{label:16s} acc {h.final.test_acc:.2%} rot corr {rot:+.2f} zoom corr {zoom:+.2f} "
          f"mean |rot| {mean_rot:.1f} deg ({h.train_seconds:.0f} s)", flush=True)  # fmt: skip
