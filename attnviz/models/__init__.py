"""Models the notebooks train: ST-CNNs for digits and attention ResNets.

- :mod:`attnviz.models.stn`: ST-CNNs and the CNNs they are compared with (digits);
- :mod:`attnviz.models.resnets`: ResNets with attention on every residual branch.
"""

from .resnets import AttnBasicBlock, AttnBottleneck, SmallResNet, resnet, small_resnet
from .stn import STCNN, SmallCNN, TinyCNN, TutorialSTN, stn_localization

__all__ = [
    "STCNN",
    "AttnBasicBlock",
    "AttnBottleneck",
    "SmallCNN",
    "SmallResNet",
    "TinyCNN",
    "TutorialSTN",
    "resnet",
    "small_resnet",
    "stn_localization",
]
