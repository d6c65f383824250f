"""Train the models the README pictures show and save their checkpoints (any device).

    python scripts/train_showcase.py OUT_DIR

Full-size runs of the notebooks' recipes: the RTS ST-CNN, plain / SE / CBAM ResNet-10s and
a non-local ResNet-10 on digits-on-photos. Run on a GPU it takes a couple of minutes.
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
start = time.time()
test = distorted_mnist("RTS", "test", seed=0)
st = STCNN((42, 42), (28, 28))
probe = snapshot_attention(test.images[:16], "theta")
h = fit(st, lambda e: distorted_mnist("RTS", "train", seed=e), test, epochs=20, progress=False,
        param_groups=stn_param_groups(st), snapshot=probe)  # fmt: skip
save_checkpoint(out / "stcnn_rts.pt", st, history=h)
print(f"ST-CNN RTS {h.final.test_acc:.2%}", flush=True)
train = digits_on_photos("train", n=10000, seed=0)
photos_test = digits_on_photos("test", n=2000, seed=0)
for name, attention in [("plain", None), ("se", "se"), ("cbam", "cbam"), ("nonlocal", "nonlocal")]:
    torch.manual_seed(0)
    model = small_resnet(10, attention=attention, width=16, stem_stride=2)
    h = fit(model, train, photos_test, epochs=12, lr=3e-3, progress=False)
    save_checkpoint(out / f"resnet10_{name}.pt", model, history=h)
    print(f"ResNet-10 {name}: {h.final.test_acc:.2%} ({h.train_seconds:.0f} s)", flush=True)
print(f"done in {time.time() - start:.0f} s on {h.device}")
