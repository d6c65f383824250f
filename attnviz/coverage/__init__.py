"""Which model families' attention a capture records, and how: a sweep of the zoo.

    from attnviz import coverage
    rows = coverage.sweep()                  # every family below, random weights, one image
    print(coverage.markdown_table(rows))
    coverage.summary(rows)                   # counts by status, per row and per family

The zoo:

- **timm**: every model module of timm (``timm.list_modules()``: ``swin_transformer``,
  ``maxxvit``, ``resnet``, ...) is a family. Each is represented by its smallest
  registered model (:data:`TIMM_CASES`), plus one row per further attention mechanism
  the family holds (``byoanet``: HaloNet, BoTNet and LambdaNet; ``resnet``: SE and ECA
  variants; ...). Families without attention (ConvNeXt, Inception, VGG, ...) are swept
  too: they must say that they apply no attention. Large models are built with smaller
  depths or widths where the constructor takes them (shown beside the model name); the
  attention modules are the same classes, called the same way. A timm module missing
  from :data:`TIMM_CASES` (a newer timm) is represented by its smallest registered model
  at its default input.
- **torchvision**: its transformers, ``vit_b_16``, ``swin_t``, ``swin_v2_t``, ``maxvit_t``.
- **Hugging Face transformers** (if installed): ViT, DeiT, DINOv2, DINOv2 with
  registers, CLIP's and SigLIP's vision towers, BEiT and Swin encoders with tiny configs,
  built by ``Model._from_config(config, attn_implementation="sdpa")``.

Every model is built with random weights (seeded, without touching the caller's random
state), put in eval mode and called on one random image inside :func:`attnviz.capture`.
Its row's status:

- ``"recorded"``: records, every faithfulness check within tolerance, no attention kernel
  left unrecorded, no refusal, and every self-attention record's tokens placed on the
  image;
- ``"recorded, not placed"``: the same, but some self-attention records' tokens are not
  placed (attnviz knows no layout for them: ``record.geometry.unplaced``);
- ``"partial"``: an attention kernel ran but was not recorded (``Recording.unrecorded``),
  or a check failed;
- ``"refused"``: modules refused by design (``Recording.refused``), reasons in the note;
- ``"no attention"``: the capture found no attention (its
  :class:`~attnviz.capture.NoAttentionError`; ``"refused"`` for its subclass
  :class:`~attnviz.capture.AllRefusedError`);
- ``"error"``: anything else went wrong (the message is kept);
- ``"skipped: ..."``: not run, with the reason (:data:`SKIPPED`).

A family is *attention-bearing* when one of its rows found a record, a refusal or an
unrecorded kernel. A family's status is the worst of its rows' (see :data:`STATUSES`).
"""

from .catalog import HF_CASES, TIMM_CASES, Case, cases
from .sweep import (
    ERROR,
    EXACT,
    NO_ATTENTION,
    PARTIAL,
    RECORDED,
    RECORDED_NOT_PLACED,
    REFUSED,
    SKIPPED,
    STATUSES,
    CoverageRow,
    Status,
    run_case,
    sweep,
)
from .table import family_status, markdown_table, readme_section, summary

__all__ = [
    "ERROR",
    "EXACT",
    "HF_CASES",
    "NO_ATTENTION",
    "PARTIAL",
    "RECORDED",
    "RECORDED_NOT_PLACED",
    "REFUSED",
    "SKIPPED",
    "STATUSES",
    "TIMM_CASES",
    "Case",
    "CoverageRow",
    "Status",
    "cases",
    "family_status",
    "markdown_table",
    "readme_section",
    "run_case",
    "summary",
    "sweep",
]
