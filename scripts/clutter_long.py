"""How well does the ST-CNN localise cluttered digits as training grows? (device experiment)"""

import sys
import time

import torch

from attnviz.data import distorted_mnist
from attnviz.metrics import sampled_box_iou
from attnviz.models import STCNN
from attnviz.train import fit, stn_param_groups

test = distorted_mnist("cluttered", "test", seed=0)
train = {e: distorted_mnist("cluttered", "train", seed=100 + e) for e in range(80)}
for out, aware, stn_lr in [(20, True, 3e-4), (28, False, 3e-4), (20, True, 1e-4)]:
    torch.manual_seed(0)
    m = STCNN((60, 60), (out, out), transform="attention", position_aware=aware)
    ious = []

    def snap(model, ious=ious):
        iou = sampled_box_iou(model, test.images[:500], test.boxes[:500]).mean().item()
        ious.append(round(iou, 3))
        return {}

    t = time.time()
    h = fit(
        m,
        lambda e: train[e % 80],
        test,
        epochs=80,
        batch_size=64,
        param_groups=stn_param_groups(m, stn_lr=stn_lr),
        progress=False,
        snapshot=snap,
    )
    print(
        f"out={out} aware={aware} stn_lr={stn_lr} {time.time() - t:.0f}s",
        "acc",
        [round(e.test_acc, 3) for e in h.epochs][::5],
        "iou",
        ious[::5],
        ious[-1],
        flush=True,
    )
    sys.stdout.flush()
