"""Does CBAM's spatial map point at the digit with finer maps or longer training? (device run)"""

import torch

from attnviz.data import digits_on_photos
from attnviz.metrics import cbam_spatial_maps, score_maps
from attnviz.models import small_resnet
from attnviz.train import fit

train = digits_on_photos("train", n=10000, seed=0)
test = digits_on_photos("test", n=2000, seed=0)
for stride, epochs in [(2, 12), (1, 12), (1, 30)]:
    torch.manual_seed(0)
    model = small_resnet(10, attention="cbam", width=16, stem_stride=stride)
    h = fit(model, train, test, epochs=epochs, lr=3e-3, progress=False)
    maps = cbam_spatial_maps(model, test.images)
    _, scores = score_maps(maps, test.boxes, test.masks)
    hits = {k.split(".")[0]: round(v["pointing_game"], 3) for k, v in scores.items()}
    acc = h.final.test_acc
    print(f"stem stride {stride}, {epochs} epochs: acc {acc:.2%}, pointing game {hits}", flush=True)
