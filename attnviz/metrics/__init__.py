"""Scores of attention against ground truth: pure maths on maps (and, for the functions
that take a model, one capture of it).

- :mod:`attnviz.metrics.spatial`: pointing game, energy, mask IoU, priors, ideal maps;
- :mod:`attnviz.metrics.stn`: sampled-region IoU, its ceiling, transform agreement;
- :mod:`attnviz.metrics.self_attention`: attention kept on the object;
- :mod:`attnviz.metrics.report`: the Markdown tables.
"""

from .report import scores_table
from .self_attention import attention_on_object
from .spatial import (
    center_prior,
    energy_pointing_game,
    mask_iou,
    mask_share_maps,
    pointing_game,
    score_maps,
)
from .stn import sampled_box_iou, square_window_ceiling, transform_agreement

__all__ = [
    "attention_on_object",
    "center_prior",
    "energy_pointing_game",
    "mask_iou",
    "mask_share_maps",
    "pointing_game",
    "sampled_box_iou",
    "score_maps",
    "scores_table",
    "square_window_ceiling",
    "transform_agreement",
]
