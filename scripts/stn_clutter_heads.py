"""Which regression head lets a spatial transformer find digits in clutter? (CPU, ~10 min)

    python scripts/stn_clutter_heads.py

The paper's linear head on flattened localisation features against attnviz's heat-map
(soft-argmax) head, both with the attention transform and a 10 x 10 output on 60 x 60
cluttered MNIST, 30 epochs, the same data, seed and learning rates.
"""

import torch

import attnviz
from attnviz.data import distorted_mnist
from attnviz.metrics import sampled_box_iou
from attnviz.models import STCNN
from attnviz.train import fit, stn_param_groups

torch.set_num_threads(1)
test = distorted_mnist("cluttered", "test", seed=0)
centre_x = (test.boxes[:, 0] + test.boxes[:, 2]) / 60 - 1
for label, make in [
    ("linear head (paper)", lambda: STCNN((60, 60), (10, 10), transform="attention")),
    ("heat-map head", STCNN.for_clutter),
]:
    torch.manual_seed(0)
    model = make()
    h = fit(model, lambda e: distorted_mnist("cluttered", "train", seed=100 + e), test,
            epochs=30, param_groups=stn_param_groups(model, stn_lr=1e-3),
            progress=False)  # fmt: skip
    iou = sampled_box_iou(model, test.images, test.boxes).mean().item()
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(test.images)
    theta = rec["stn"].theta
    follow = torch.corrcoef(torch.stack([theta[:, 0, 2], centre_x]))[0, 1].item()
    print(f"{label:20s} acc {h.final.test_acc:.1%} IoU {iou:.3f} zoom "
          f"{theta[:, 0, 0].mean():.2f} corr(window x, digit x) {follow:.2f} "
          f"({h.train_seconds:.0f} s)", flush=True)  # fmt: skip
