"""Train the models the README pictures show and save their checkpoints (any device).

    python scripts/train_showcase.py OUT_DIR [stn] [resnets | plain se cbam nonlocal]

Full-size runs of the notebooks' recipes: the RTS and cluttered-MNIST ST-CNNs (``stn``,
about 4 minutes on a 2-core CPU), plain / SE / CBAM ResNet-10s and a non-local
ResNet-10 on digits-on-photos (``resnets``, a couple of minutes on a GPU; CBAM alone,
6 epochs, about 2 minutes on a 2-core CPU). Both by default.
"""

import sys
import time
from pathlib import Path

import torch

from attnviz.data import digits_on_photos, distorted_mnist
from attnviz.models import STCNN, small_resnet
from attnviz.train import fit, save_checkpoint, snapshot_attention, stn_param_groups

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
parts = sys.argv[2:] or ["stn", "resnets"]
start = time.time()
if "stn" in parts:
    test = distorted_mnist("RTS", "test", seed=0)
    st = STCNN.for_rts()
    probe = snapshot_attention(test.images[:16], "theta")
    h = fit(st, lambda e: distorted_mnist("RTS", "train", seed=e), test, epochs=30,
            progress=False, param_groups=stn_param_groups(st, stn_lr=1e-3),
            snapshot=probe)  # fmt: skip
    save_checkpoint(out / "stcnn_rts.pt", st, history=h)
    print(f"ST-CNN RTS {h.final.test_acc:.2%}", flush=True)
    test = distorted_mnist("cluttered", "test", seed=0)
    st = STCNN.for_clutter()
    h = fit(st, lambda e: distorted_mnist("cluttered", "train", seed=e), test, epochs=30,
            progress=False, param_groups=stn_param_groups(st, stn_lr=1e-3))  # fmt: skip
    save_checkpoint(out / "stcnn_clutter.pt", st, history=h)
    print(f"ST-CNN cluttered {h.final.test_acc:.2%}", flush=True)
nets = [n for n in ("plain", "se", "cbam", "nonlocal") if n in parts or "resnets" in parts]
if nets:
    train = digits_on_photos("train", n=10000, seed=0)
    photos_test = digits_on_photos("test", n=2000, seed=0)
    for name in nets:
        attention = None if name == "plain" else name
        kwargs = {"spatial_kernel": 3} if name == "cbam" else None  # as in notebook 03
        torch.manual_seed(0)
        model = small_resnet(10, attention=attention, width=16, stem_stride=2,
                             attention_kwargs=kwargs)  # fmt: skip
        # CBAM as notebook 03 trains it: its last-block map localises at 6 epochs (README)
        epochs = 6 if name == "cbam" else 12
        h = fit(model, train, photos_test, epochs=epochs, lr=3e-3, progress=False)
        save_checkpoint(out / f"resnet10_{name}.pt", model, history=h)
        print(f"ResNet-10 {name}: {h.final.test_acc:.2%} ({h.train_seconds:.0f} s)", flush=True)
print(f"done in {time.time() - start:.0f} s on {h.device}")
