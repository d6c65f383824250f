"""The benchmark's RTS ST-CNN run on CUDA: accuracy and training seconds (device check)."""

import torch

from attnviz.data import distorted_mnist
from attnviz.models import STCNN
from attnviz.train import fit, stn_param_groups

test = distorted_mnist("RTS", "test", seed=0)
model = STCNN((42, 42), (28, 28))
h = fit(model, lambda e: distorted_mnist("RTS", "train", seed=1000 + e), test, epochs=20,
        param_groups=stn_param_groups(model), progress=False)  # fmt: skip
print(
    torch.cuda.get_device_name(0), f"ST-CNN RTS: {h.final.test_acc:.2%} in {h.train_seconds:.1f} s"
)
