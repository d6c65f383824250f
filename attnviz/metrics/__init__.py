"""Scores of attention against ground truth: pure maths on maps (and, for the functions
that take a model, one capture of it).

- :mod:`attnviz.metrics.spatial`: pointing game, energy, mask IoU, priors, ideal maps;
- :mod:`attnviz.metrics.stn`: sampled-region IoU, its ceiling, transform agreement;
- :mod:`attnviz.metrics.self_attention`: attention kept on the object;
- :mod:`attnviz.metrics.faithfulness`: every explanation map's scores side by side
  (pointing game against masks, energy in mask, 60%-mass Jaccard, deletion / insertion
  and positive / negative perturbation curves of a model), with baselines and intervals;
- :mod:`attnviz.metrics.report`: the Markdown tables.
"""

from .faithfulness import MethodScores, score_methods
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
    "MethodScores",
    "attention_on_object",
    "center_prior",
    "energy_pointing_game",
    "mask_iou",
    "mask_share_maps",
    "pointing_game",
    "sampled_box_iou",
    "score_maps",
    "score_methods",
    "scores_table",
    "square_window_ceiling",
    "transform_agreement",
]
