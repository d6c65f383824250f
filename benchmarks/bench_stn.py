"""Spatial transformers on RTS and cluttered MNIST: ours vs the PyTorch tutorial's network.

The tutorial network is trained the tutorial's way (SGD, lr 0.01, batch 64, 20
epochs, inputs normalised with MNIST's mean and std) on one fixed RTS-distorted
copy of the 4,000 training digits. Ours (ST-CNN) and the same CNN without the
transformer train with Adam and a one-cycle schedule on fresh distortions of the
same digits every epoch. All are tested on the same 1,000 held-out RTS digits.
"""

from __future__ import annotations

import torch

from attnviz.data import distorted_mnist
from attnviz.metrics import sampled_box_iou
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
    epochs_ours = 2 if quick else 20
    epochs_tut = 2 if quick else 20
    test = distorted_mnist("RTS", "test", seed=0)

    def fresh(epoch):
        return distorted_mnist("RTS", "train", seed=1000 + epoch)

    rows = []
    tut = TutorialSTN((42, 42))
    h = fit(tut, _Normalised(distorted_mnist("RTS", "train", seed=1000)), _Normalised(test),
            epochs=epochs_tut, batch_size=64, lr=0.01, optimizer="sgd", schedule=None,
            progress=False)  # fmt: skip
    rows.append(("PyTorch tutorial STN (SGD, fixed distortions)", h))
    st = STCNN((42, 42), (28, 28))
    h = fit(st, fresh, test, epochs=epochs_ours, param_groups=stn_param_groups(st), progress=False)
    rows.append(("attnviz ST-CNN", h))
    iou_rts = sampled_box_iou(st, test.images, test.boxes).mean().item()
    cnn = SmallCNN()
    h = fit(cnn, fresh, test, epochs=epochs_ours, lr=3e-3, progress=False)
    rows.append(("same CNN without the transformer", h))

    table = ["| model | epochs | train seconds | test accuracy | test error | seconds to 97% |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    raw = []
    for name, hist in rows:
        acc, secs = hist.final.test_acc, hist.train_seconds
        t97 = _time_to(hist, 0.97)
        table.append(f"| {name} | {hist.final.epoch} | {secs:.1f} | {acc:.2%} | {1 - acc:.2%} | "
                     f"{'not reached' if t97 != t97 else f'{t97:.1f}'} |")  # fmt: skip
        raw.append({"model": name, "epochs": hist.final.epoch, "train_seconds": secs,
                    "test_acc": acc, "seconds_to_97": t97,
                    "per_epoch_acc": [e.test_acc for e in hist.epochs]})  # fmt: skip

    clutter = cluttered(quick)
    c = clutter
    table += [
        "",
        "| cluttered MNIST (60x60) | epochs | train seconds | test accuracy "
        "| mean IoU sampled box vs digit box | untrained IoU (floor) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| attnviz ST-CNN, attention transform | {c['epochs']} | {c['train_seconds']:.1f} "
        f"| {c['test_acc']:.2%} | {c['iou']:.3f} | {c['iou_floor']:.3f} |",
    ]
    notes = [
        f"RTS: mean IoU of the ST-CNN's sampled region with the digit box {iou_rts:.3f}.",
        "Seconds are training time only (evaluation excluded), torch threads as stated.",
    ]
    title = "Spatial transformer (RTS and cluttered MNIST)"
    return {"title": title, "table": "\n".join(table), "rows": raw, "cluttered": clutter,
            "iou_rts": iou_rts, "notes": notes}  # fmt: skip


CLUTTER_OUTPUT = (28, 28)  # as in notebook 01


def cluttered(quick: bool) -> dict:
    epochs = 2 if quick else 20
    test = distorted_mnist("cluttered", "test", seed=0)
    model = STCNN((60, 60), CLUTTER_OUTPUT, transform="attention")
    floor = sampled_box_iou(model, test.images, test.boxes).mean().item()
    h = fit(model, lambda e: distorted_mnist("cluttered", "train", seed=1000 + e), test,
            epochs=epochs, param_groups=stn_param_groups(model), progress=False)  # fmt: skip
    iou = sampled_box_iou(model, test.images, test.boxes).mean().item()
    return {"epochs": epochs, "train_seconds": h.train_seconds, "test_acc": h.final.test_acc,
            "iou": iou, "iou_floor": floor}  # fmt: skip
