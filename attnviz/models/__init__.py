"""Models the notebooks train: ST-CNNs for digits, attention ResNets, a small ViT.

- :mod:`attnviz.models.stn`: ST-CNNs and the CNNs they are compared with (digits);
- :mod:`attnviz.models.resnets`: ResNets with attention on every residual branch;
- :mod:`attnviz.models.vit`: a small vision transformer (class token, registers).
"""

from .resnets import AttnBasicBlock, AttnBottleneck, SmallResNet, resnet, small_resnet
from .stn import STCNN, SmallCNN, TinyCNN, TutorialSTN, stn_localization
from .vit import SmallViT, small_vit

__all__ = [
    "STCNN",
    "AttnBasicBlock",
    "AttnBottleneck",
    "SmallCNN",
    "SmallResNet",
    "SmallViT",
    "TinyCNN",
    "TutorialSTN",
    "resnet",
    "small_resnet",
    "small_vit",
    "stn_localization",
]
