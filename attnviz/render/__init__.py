"""Render attention to pixels: numpy uint8 arrays or PIL images out, never displays.

- :mod:`attnviz.render.image`: any image to 8-bit RGB, upscaling, montages, PNG bytes;
- :mod:`attnviz.render.heat`: attention maps as colours over images (the map pipeline's
  pictures: normalize, upsample, colour, blend);
- :mod:`attnviz.render.stn`: a spatial transformer's sampled region and boxes;
- :mod:`attnviz.render.charts`: bar charts drawn straight into pixels.

Offer "return" beside "show": every function returns pixels; widgets and notebooks
display them.
"""

from .charts import bar_chart, branch_choice, mark_bar
from .heat import (
    NORMALIZE_MODES,
    colorize,
    normalize_map,
    overlay,
    overlay_grid,
    overlay_info,
    upsample_map,
)
from .image import (
    ImageLike,
    as_pil,
    check_scale,
    figure_to_image,
    fit_height,
    montage,
    png_bytes,
    to_uint8_rgb,
    upscale,
)
from .stn import BOX_COLOR, QUAD_COLOR, draw_box, draw_quad, stn_grid

__all__ = [
    "BOX_COLOR",
    "NORMALIZE_MODES",
    "QUAD_COLOR",
    "ImageLike",
    "as_pil",
    "bar_chart",
    "branch_choice",
    "check_scale",
    "colorize",
    "draw_box",
    "draw_quad",
    "figure_to_image",
    "fit_height",
    "mark_bar",
    "montage",
    "normalize_map",
    "overlay",
    "overlay_grid",
    "overlay_info",
    "png_bytes",
    "stn_grid",
    "to_uint8_rgb",
    "upsample_map",
    "upscale",
]
