"""Pure tensor maths on captured attention: torch tensors in, torch tensors out.

- :mod:`attnviz.maps.heat`: the map pipeline (check, :func:`upsample`, :func:`normalize`)
  that records, metrics, pictures and widgets all use;
- :mod:`attnviz.maps.views`: a record's attention as one map per image
  (:func:`attention_view`, :func:`weighted_activation`, a vision transformer's
  :func:`attention_rollout`);
- :mod:`attnviz.maps.geometry`: spatial transformers' theta, sampled regions and boxes.

Nothing here draws or imports a picture module.
"""

from .geometry import (
    as_size,
    box_iou,
    compose_theta,
    decompose_theta,
    polygon_area,
    polygon_iou,
    resample,
    theta_corners,
)
from .heat import NORMALIZE_MODES, as_maps, map_ranges, normalize, upsample
from .views import (
    ROLLOUT,
    attention_rollout,
    attention_view,
    attention_views,
    rollout_map,
    weighted_activation,
)

__all__ = [
    "NORMALIZE_MODES",
    "ROLLOUT",
    "as_maps",
    "as_size",
    "attention_rollout",
    "attention_view",
    "attention_views",
    "box_iou",
    "compose_theta",
    "decompose_theta",
    "map_ranges",
    "normalize",
    "polygon_area",
    "polygon_iou",
    "resample",
    "rollout_map",
    "theta_corners",
    "upsample",
    "weighted_activation",
]
