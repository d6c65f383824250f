"""Spatial transformers on RTS and cluttered MNIST: ours vs the PyTorch tutorial's network.

The tutorial network is trained the tutorial's way (SGD, lr 0.01, batch 64, 20
epochs, inputs normalised with MNIST's mean and std) on one fixed RTS-distorted
copy of the 4,000 training digits. Ours (``STCNN.for_rts``: a heat-map transformer
in front of the tutorial-sized TinyCNN) and the same TinyCNN without the
transformer -- for the same epochs and for the same seconds -- train with Adam and
a one-cycle schedule on fresh distortions of the same digits every epoch; so do the
paper's linear-head transformer with the bigger SmallCNN and SmallCNN alone. All
are tested on the same 1,000 held-out RTS digits.
"""

from __future__ import annotations

import torch

import attnviz
from attnviz import recipes
from attnviz.data import distorted_mnist
from attnviz.metrics import sampled_box_iou, square_window_ceiling
from attnviz.models import STCNN, SmallCNN, TutorialSTN
from attnviz.train import fit, stn_param_groups

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class _Normalised(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.images = (ds.images - MNIST_MEAN) / MNIST_STD
        self.labels = ds.labels

    def __len__(self):
        return len(self.labels)


def _time_to(history, target):
    spent = 0.0
    for e in history.epochs[1:]:
        spent += e.seconds
        if e.test_acc >= target:
            return spent
    return float("nan")


def run(quick: bool = False) -> dict:
    epochs_ours = 2 if quick else 30
    epochs_tut = 2 if quick else 20
    test = distorted_mnist("RTS", "test", seed=0)

    def fresh(epoch):
        return distorted_mnist("RTS", "train", seed=1000 + epoch)

    rows = []
    tut = TutorialSTN((42, 42))
    h = fit(
        tut,
        _Normalised(distorted_mnist("RTS", "train", seed=1000)),
        _Normalised(test),
        epochs=epochs_tut,
        batch_size=64,
        lr=0.01,
        optimizer="sgd",
        schedule=None,
        progress=False,
    )
    rows.append(("PyTorch tutorial STN (SGD, fixed distortions)", h))
    # the shipped recipes (attnviz.recipes), on the training data of data seed 1
    ours = recipes.get("stcnn_rts").variant(train={"epochs": epochs_ours})
    alone = recipes.get("tinycnn_rts").variant(train={"epochs": epochs_ours})
    st = ours.build()
    h_st = ours.fit(st, test, data_seed=1, progress=False)
    rows.append(("attnviz ST-CNN (heat-map transformer + TinyCNN)", h_st))
    iou_rts = sampled_box_iou(st, test.images, test.boxes).mean().item()
    h = alone.fit(alone.build(), test, data_seed=1, progress=False)
    rows.append(("same TinyCNN without the transformer, same epochs", h))
    # the same seconds: as many epochs as the transformer's training time buys
    same_time = max(1, round(h_st.train_seconds / (h.train_seconds / epochs_ours)))
    longer = alone.variant(train={"epochs": same_time})
    h = longer.fit(longer.build(), test, data_seed=1, progress=False)
    rows.append(("same TinyCNN without the transformer, same seconds", h))
    big = STCNN((42, 42), (28, 28))
    h = fit(
        big, fresh, test, epochs=epochs_ours, param_groups=stn_param_groups(big), progress=False
    )
    rows.append(("paper's linear-head transformer + SmallCNN (batch-norm, global pool)", h))
    h = fit(SmallCNN(), fresh, test, epochs=epochs_ours, lr=3e-3, progress=False)
    rows.append(("SmallCNN without the transformer", h))

    table = [
        "| model | epochs | train seconds | test accuracy | test error | seconds to 97% |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    raw = []
    for name, hist in rows:
        acc, secs = hist.final.test_acc, hist.train_seconds
        t97 = _time_to(hist, 0.97)
        table.append(
            f"| {name} | {hist.final.epoch} | {secs:.1f} | {acc:.2%} | {1 - acc:.2%} | "
            f"{'not reached' if t97 != t97 else f'{t97:.1f}'} |"
        )
        raw.append(
            {
                "model": name,
                "epochs": hist.final.epoch,
                "train_seconds": secs,
                "test_acc": acc,
                "seconds_to_97": t97,
                "per_epoch_acc": [e.test_acc for e in hist.epochs],
            }
        )

    clutter = cluttered(quick)
    c = clutter
    table += [
        "",
        "| cluttered MNIST (60x60) | epochs | train seconds | test accuracy "
        "| mean IoU sampled box vs digit box | untrained IoU (floor) | best square window "
        "(ceiling) | mean zoom | corr(window x, digit x) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| attnviz ST-CNN for clutter (heat-map head) | {c['epochs']} "
        f"| {c['train_seconds']:.1f} | {c['test_acc']:.2%} | {c['iou']:.3f} "
        f"| {c['iou_floor']:.3f} | {c['iou_ceiling']:.3f} | {c['zoom']:.2f} "
        f"| {c['centre_corr']:.2f} |",
    ]
    notes = [
        f"RTS: mean IoU of the ST-CNN's sampled region with the digit box {iou_rts:.3f}.",
        "Seconds are training time only (evaluation excluded), torch threads as stated.",
    ]
    title = "Spatial transformer (RTS and cluttered MNIST)"
    return {
        "title": title,
        "table": "\n".join(table),
        "rows": raw,
        "cluttered": clutter,
        "iou_rts": iou_rts,
        "notes": notes,
    }


def cluttered(quick: bool) -> dict:
    """STCNN.for_clutter (heat-map head, 10x10 output) on 60x60 cluttered MNIST."""
    epochs = 2 if quick else 30
    recipe = recipes.get("stcnn_clutter").variant(train={"epochs": epochs})
    test = recipe.test_data(0)
    model = recipe.build()
    floor = sampled_box_iou(STCNN((60, 60), transform="attention"), test.images, test.boxes)
    h = recipe.fit(model, test, data_seed=1, progress=False)
    iou = sampled_box_iou(model, test.images, test.boxes).mean().item()
    with torch.no_grad(), attnviz.capture(model) as rec:
        model(test.images)
    theta = rec["stn"].theta
    centre_x = (test.boxes[:, 0] + test.boxes[:, 2]) / 60 - 1
    follow = torch.corrcoef(torch.stack([theta[:, 0, 2], centre_x]))[0, 1].item()
    return {
        "epochs": epochs,
        "train_seconds": h.train_seconds,
        "test_acc": h.final.test_acc,
        "iou": iou,
        "iou_floor": floor.mean().item(),
        "zoom": theta[:, 0, 0].mean().item(),
        "iou_ceiling": square_window_ceiling(test.boxes).mean().item(),
        "centre_corr": follow,
    }
