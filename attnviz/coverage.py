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
  placed (attnviz knows no layout for them: ``meta["tokens_unplaced"]``);
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

from __future__ import annotations

import importlib
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .capture import AllRefusedError, CaptureWarning, NoAttentionError, capture
from .records import KINDS, Record, Recording
from .registry import find_attention_modules

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


class Status(str, Enum):
    """What a capture of a model found (a row's status; see the module docstring). A
    ``str``, so rows compare with and print as the plain words."""

    RECORDED = "recorded"
    RECORDED_NOT_PLACED = "recorded, not placed"
    PARTIAL = "partial"
    REFUSED = "refused"
    NO_ATTENTION = "no attention"
    ERROR = "error"
    SKIPPED = "skipped: too large for the sweep"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


RECORDED = Status.RECORDED
RECORDED_NOT_PLACED = Status.RECORDED_NOT_PLACED
PARTIAL = Status.PARTIAL
REFUSED = Status.REFUSED
NO_ATTENTION = Status.NO_ATTENTION
ERROR = Status.ERROR
SKIPPED = Status.SKIPPED

#: every status, worst first (a family's status is the worst of its rows'); a status
#: that starts with "skipped" ranks with :data:`SKIPPED`
STATUSES = (ERROR, PARTIAL, REFUSED, SKIPPED, RECORDED_NOT_PLACED, RECORDED, NO_ATTENTION)

#: statuses of attention recorded exactly (every kernel recorded, every check passed)
EXACT = (RECORDED, RECORDED_NOT_PLACED)


@dataclass(frozen=True)
class Case:
    """One model of the sweep: how to build it and call it.

    Attributes:
        library: ``"timm"``, ``"torchvision"`` or ``"transformers"``.
        family: the family it represents (timm: the model's module, e.g. ``"maxxvit"``).
        model: the model's name.
        input_size: (H, W) of the random image it is called on.
        build: makes the model (random weights).
        overrides: constructor arguments that shrink it, as shown in the table.
        forward: calls the model on the image (default ``model(x)``).
        note: said in the row's note before anything the capture says.
        skip: the reason it is not run (its status then starts with "skipped").
    """

    library: str
    family: str
    model: str
    input_size: tuple[int, int]
    build: Callable[[], nn.Module]
    overrides: str = ""
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None
    note: str = ""
    skip: str | None = None


@dataclass
class CoverageRow:
    """What a capture recorded for one model (see the module docstring for ``status``).

    Attributes:
        kinds: record counts by kind (``{"self": 12, "channel": 2}``).
        placed, unplaced: self-attention records whose tokens attnviz places on the
            image, and those it does not (``meta["tokens_unplaced"]``).
        seconds: building, running and capturing the model.
        note: the reasons behind the status (verbatim: unrecorded kernels, failed checks,
            refusals, the error), or what the unplaced records are.
        unrecorded: ``Recording.unrecorded``; refused: ``Recording.refused``;
        failed: the failed checks, name -> ``"what (error e, tolerance t)"``.
        warnings: the messages of every :class:`~attnviz.CaptureWarning` the capture
            emitted.
    """

    library: str
    family: str
    model: str
    input_size: tuple[int, int]
    status: str
    kinds: dict[str, int] = field(default_factory=dict)
    placed: int = 0
    unplaced: int = 0
    seconds: float = 0.0
    note: str = ""
    overrides: str = ""
    unrecorded: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def attention(self) -> bool:
        """Whether the capture found attention: a record, a refusal or an unrecorded kernel."""
        return bool(self.kinds or self.refused or self.unrecorded)


# -- timm -------------------------------------------------------------------------------------
#: timm module -> the models that represent it: (name, input side, constructor overrides).
#: The first is the family's smallest registered model (by parameters; a small one where the
#: smallest is slow on a CPU: byoanet's halonet_h1), with or without attention; the others
#: add each further attention mechanism of the family, so that a family whose smallest
#: model has none (resnet, regnet, cspnet, metaformer) shows its SE, ECA or self-attention
#: variants too. Overrides shrink large models (depth, width, image size) and never change
#: which attention modules run; the input side is the smallest each model accepts cheaply.
TIMM_CASES: dict[str, list[tuple[str, int, dict[str, Any]]]] = {
    "beit": [("beit_base_patch16_224", 64, {"img_size": 64, "depth": 2})],
    "byoanet": [
        ("eca_halonext26ts", 256, {}),
        ("eca_botnext26ts_256", 128, {"img_size": 128}),
        ("haloregnetz_b", 224, {}),
        ("lambda_resnet26t", 128, {}),
    ],
    "byobnet": [
        ("test_byobnet", 64, {}),
        ("eca_resnext26ts", 64, {}),
        ("gcresnext26ts", 64, {}),
        ("bat_resnext26ts", 256, {}),
        ("resnet50_clip", 224, {}),
    ],
    "cait": [("cait_xxs24_224", 64, {"img_size": 64, "depth": 2})],
    "coat": [("coat_tiny", 64, {"img_size": 64})],
    "convit": [("convit_tiny", 64, {"img_size": 64})],
    "convmixer": [("convmixer_768_32", 64, {})],
    "convnext": [("test_convnext", 64, {})],
    "cpubone": [("cpubone_nano", 64, {})],
    "crossvit": [("crossvit_tiny_240", 240, {})],
    "csatv2": [("csatv2", 128, {})],
    "cspnet": [("cs3darknet_focus_s", 64, {}), ("sedarknet21", 64, {})],
    "cspnext": [("cspnext_tiny", 64, {})],
    "davit": [
        ("davit_tiny", 64, {}),
        (
            "davit_base_fl",
            64,
            {"depths": (1, 1, 1, 1), "embed_dims": (32, 64, 128, 256), "num_heads": (1, 2, 4, 8)},
        ),
    ],
    "deepseek_vit": [("deepseek_vit_412m", 84, {"img_size": 84, "depth": 2})],
    "deit": [("deit_tiny_patch16_224", 64, {"img_size": 64})],
    "densenet": [("densenet121", 64, {})],
    "dla": [("dla46x_c", 64, {})],
    "dpn": [("dpn48b", 64, {})],
    "edgenext": [("edgenext_xx_small", 64, {})],
    "efficientformer": [("efficientformer_l1", 224, {})],
    "efficientformer_v2": [("efficientformerv2_s0", 224, {})],
    "efficientnet": [("test_efficientnet", 64, {}), ("gc_efficientnetv2_rw_t", 64, {})],
    "efficientvim": [("efficientvim_m1", 64, {})],
    "efficientvit_mit": [("efficientvit_b0", 64, {})],
    "efficientvit_msra": [("efficientvit_m0", 224, {})],
    "eva": [
        ("vit_tiny_patch16_dinov3_qkvb", 64, {"img_size": 64}),
        ("vit_pe_spatial_tiny_patch16_512", 64, {"img_size": 64}),
        ("vit_pe_core_tiny_patch16_384", 64, {"img_size": 64}),
        (
            "eva02_enormous_patch14_clip_224",
            56,
            {"img_size": 56, "depth": 2, "embed_dim": 64, "num_heads": 4},
        ),
    ],
    "fasternet": [("fasternet_t0", 64, {})],
    "fastvit": [("fastvit_t8", 64, {}), ("fastvit_mci0", 64, {})],
    "focalnet": [("focalnet_tiny_srf", 64, {})],
    "gcvit": [("gcvit_xxtiny", 224, {})],
    "gemma4_vit": [("gemma4_vit_167m", 96, {"img_size": 96, "depth": 2})],
    "ghostnet": [("ghostnet_050", 64, {})],
    "hardcorenas": [("hardcorenas_b", 64, {})],
    "hgnet": [("hgnetv2_b0", 64, {})],
    "hiera": [("hiera_tiny_224", 224, {})],
    "hieradet_sam2": [("sam2_hiera_tiny", 224, {})],
    "hrnet": [("hrnet_w18_small", 64, {})],
    "iformer": [("iformer_t", 224, {})],
    "inception_next": [("inception_next_atto", 64, {})],
    "inception_resnet_v2": [("inception_resnet_v2", 96, {})],
    "inception_v3": [("inception_v3", 96, {})],
    "inception_v4": [("inception_v4", 96, {})],
    "lcnetv2": [("lcnetv2_small", 64, {})],
    "levit": [("levit_128s", 224, {}), ("levit_conv_128s", 224, {})],
    "lowformer": [("lowformer_b0", 224, {})],
    "mambaout": [("test_mambaout", 64, {})],
    "maxxvit": [
        ("test_coatnet", 64, {"img_size": 64}),
        ("test_maxvit", 64, {"img_size": 64}),
        ("maxvit_tiny_pm_256", 64, {"img_size": 64}),
    ],
    "metaformer": [("poolformerv2_s12", 64, {}), ("caformer_s18", 64, {})],
    "mlp_mixer": [("gmlp_ti16_224", 64, {"img_size": 64})],
    "mobilenetv3": [("mobilenetv3_small_050", 64, {}), ("mobilenetv4_hybrid_medium_075", 64, {})],
    "mobilenetv5": [("mobilenetv5_base", 128, {})],
    "mobilevit": [("mobilevit_xxs", 64, {}), ("mobilevitv2_050", 64, {})],
    "mvitv2": [("mvitv2_tiny", 224, {})],
    "naflexvit": [
        ("naflexvit_base_patch16_parfac_gap", 64, {"img_size": 64, "depth": 2}),
        ("naflexvit_base_patch16_siglip", 64, {"img_size": 64, "depth": 2}),
    ],
    "nasnet": [("nasnetalarge", 96, {})],
    "nest": [("nest_tiny", 224, {})],
    "nextvit": [("nextvit_small", 224, {})],
    "nfnet": [("test_nfnet", 64, {}), ("nf_ecaresnet26", 64, {})],
    "pit": [("pit_ti_224", 224, {})],
    "pnasnet": [("pnasnet5large", 96, {})],
    "pvt_v2": [("pvt_v2_b0", 64, {})],
    "qwen3_vit": [("qwen3_vit_88m", 64, {"img_size": 64, "depth": 2})],
    "rdnet": [("rdnet_tiny", 64, {})],
    "regnet": [("regnetx_002", 64, {}), ("regnety_002", 64, {})],
    "repghost": [("repghostnet_050", 64, {})],
    "repvit": [("repvit_m1", 64, {})],
    "res2net": [("res2next50", 64, {})],
    "resnest": [("resnest14d", 64, {})],
    "resnet": [("test_resnet", 64, {}), ("seresnet18", 64, {}), ("ecaresnext26t_32x4d", 64, {})],
    "resnetv2": [("resnetv2_18", 64, {})],
    "rexnet": [("rexnet_100", 64, {})],
    "selecsls": [("selecsls42", 64, {})],
    "senet": [("legacy_seresnet18", 64, {})],
    "sequencer": [("sequencer2d_s", 64, {})],
    "shvit": [("shvit_s1", 224, {})],
    "sknet": [("skresnet18", 64, {})],
    "starnet": [("starnet_s050", 64, {})],
    "swiftformer": [("swiftformer_xs", 64, {})],
    "swin_transformer": [("swin_tiny_patch4_window7_224", 112, {"img_size": 112})],
    "swin_transformer_v2": [("swinv2_tiny_window8_256", 128, {"img_size": 128})],
    "swin_transformer_v2_cr": [("swinv2_cr_tiny_224", 112, {"img_size": 112})],
    "tiny_vit": [("tiny_vit_5m_224", 224, {})],
    "tnt": [("tnt_s_legacy_patch16_224", 64, {"img_size": 64})],
    "tresnet": [("tresnet_m", 64, {})],
    "twins": [("twins_svt_small", 64, {})],
    "vgg": [("vgg11", 64, {})],
    "visformer": [("visformer_tiny", 64, {"img_size": 64})],
    "vision_transformer": [
        ("test_vit", 64, {"img_size": 64}),
        ("test_vit3", 64, {"img_size": 64}),
        ("vit_small_patch16_18x2_224", 64, {"img_size": 64, "depth": 2}),
        ("vit_base_patch16_rpn_224", 64, {"img_size": 64, "depth": 2}),
        ("vit_pwee_patch16_reg1_gap_256", 64, {"img_size": 64, "depth": 2}),
        ("vit_dwee_patch16_reg1_gap_256", 64, {"img_size": 64, "depth": 2}),
        ("vit_dpwee_patch16_reg1_gap_256", 64, {"img_size": 64, "depth": 2}),
    ],
    "vision_transformer_hybrid": [("vit_tiny_r_s16_p8_224", 64, {"img_size": 64})],
    "vision_transformer_relpos": [
        ("test_vit_relpos", 64, {"img_size": 64}),
        ("vit_relpos_small_patch16_rpn_224", 64, {"img_size": 64, "depth": 2}),
    ],
    "vision_transformer_sam": [("samvit_base_patch16_224", 64, {"img_size": 64, "depth": 2})],
    "vitamin": [("vitamin_small_224", 64, {"img_size": 64})],
    "volo": [("volo_d1_224", 64, {"img_size": 64})],
    "vovnet": [("ese_vovnet19b_slim_dw", 64, {}), ("eca_vovnet39b", 64, {})],
    "xception": [("legacy_xception", 96, {})],
    "xception_aligned": [("xception41p", 96, {})],
    "xcit": [("xcit_nano_12_p8_224", 64, {"img_size": 64})],
}

#: timm models not run, with the reason (kept rare: prefer overrides that shrink them)
TIMM_SKIPPED: dict[str, str] = {}


def _import(name: str) -> Any:
    """An optional library, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _shown(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items())


def _timm_case(
    timm: Any, family: str, name: str, side: int, overrides: dict[str, Any], note: str = ""
) -> Case:
    def build() -> nn.Module:
        return timm.create_model(name, pretrained=False, **overrides)

    return Case(
        "timm",
        family,
        name,
        (side, side),
        build,
        _shown(overrides),
        note=note,
        skip=TIMM_SKIPPED.get(name),
    )


def _smallest_timm_model(timm: Any, family: str) -> tuple[str, int] | None:
    """The family's registered model with the fewest parameters (counted on the meta
    device, nothing allocated) and its default input side."""
    best: tuple[int, str] | None = None
    for name in timm.list_models(module=family):
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                n = sum(p.numel() for p in timm.create_model(name).parameters())
        except Exception:  # a model that needs what this machine lacks: not the smallest
            continue
        if best is None or n < best[0]:
            best = (n, name)
    if best is None:
        return None
    cfg = timm.get_pretrained_cfg(best[1])
    size = getattr(cfg, "input_size", None) or (3, 224, 224)
    return best[1], int(size[-1])


def _timm_cases(timm: Any) -> Iterator[Case]:
    for family in sorted(timm.list_modules()):
        listed = [c for c in TIMM_CASES.get(family, []) if timm.is_model(c[0])]
        if listed:
            for name, side, overrides in listed:
                yield _timm_case(timm, family, name, side, overrides)
            continue
        found = _smallest_timm_model(timm, family)
        if found is None:
            why = "no model of this family can be built here"
            yield Case("timm", family, "-", (0, 0), nn.Identity, skip=why)
            continue
        why = "not in attnviz.coverage.TIMM_CASES: its smallest model, at its default input"
        yield _timm_case(timm, family, found[0], found[1], {}, note=why)


# -- torchvision ------------------------------------------------------------------------------
def _torchvision_cases() -> Iterator[Case]:
    import torchvision.models as tvm

    yield Case(
        "torchvision",
        "vision_transformer",
        "vit_b_16",
        (32, 32),
        lambda: tvm.vit_b_16(weights=None, image_size=32),
        "image_size=32",
    )
    yield Case(
        "torchvision", "swin_transformer", "swin_t", (64, 64), lambda: tvm.swin_t(weights=None)
    )
    yield Case(
        "torchvision",
        "swin_transformer",
        "swin_v2_t",
        (64, 64),
        lambda: tvm.swin_v2_t(weights=None),
    )
    yield Case("torchvision", "maxvit", "maxvit_t", (224, 224), lambda: tvm.maxvit_t(weights=None))


# -- Hugging Face transformers ----------------------------------------------------------------
_TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "image_size": 32,
    "patch_size": 8,
}

#: family -> (config class, model class, config arguments), all of transformers
HF_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ViT": ("ViTConfig", "ViTModel", _TINY),
    "DeiT": ("DeiTConfig", "DeiTModel", _TINY),
    "DINOv2": ("Dinov2Config", "Dinov2Model", _TINY),
    "DINOv2 with registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", _TINY),
    "CLIP vision": ("CLIPVisionConfig", "CLIPVisionModel", _TINY),
    "SigLIP vision": ("SiglipVisionConfig", "SiglipVisionModel", _TINY),
    "BEiT": ("BeitConfig", "BeitModel", _TINY),
    "Swin": (
        "SwinConfig",
        "SwinModel",
        {
            "embed_dim": 16,
            "depths": [2, 2],
            "num_heads": [2, 4],
            "window_size": 4,
            "image_size": 32,
            "patch_size": 4,
        },
    ),
}


def _pixel_values(model: nn.Module, x: torch.Tensor) -> Any:
    return model(pixel_values=x)


def _hf_cases() -> Iterator[Case]:
    transformers = _import("transformers")
    for family, (config, model, kwargs) in HF_CASES.items():
        size = kwargs["image_size"]
        shown = _shown(kwargs)
        if transformers is None:
            why = "skipped: transformers is not installed"
            yield Case("transformers", family, model, (size, size), nn.Identity, shown, skip=why)
            continue

        def build(config: str = config, model: str = model, kwargs: dict = kwargs) -> nn.Module:
            cfg = getattr(transformers, config)(**kwargs)
            return getattr(transformers, model)._from_config(cfg, attn_implementation="sdpa")

        yield Case("transformers", family, model, (size, size), build, shown, _pixel_values)


def cases(libraries: Iterable[str] = ("timm", "torchvision", "transformers")) -> list[Case]:
    """The sweep's models, library by library (a library not installed gives no timm rows,
    and skipped Hugging Face rows)."""
    out: list[Case] = []
    for library in libraries:
        if library == "timm":
            timm = _import("timm")
            if timm is not None:
                out += _timm_cases(timm)
        elif library == "torchvision":
            out += _torchvision_cases()
        elif library == "transformers":
            out += _hf_cases()
        else:
            raise ValueError(f"unknown library {library!r}: timm, torchvision or transformers")
    return out


def _select(models: Iterable[Case | str] | None) -> list[Case]:
    """Cases from ``models``: Case objects, library names, ``"library:family"`` or
    ``"timm:<model name>"`` (any timm model, at its default input)."""
    if models is None:
        return cases()
    out: list[Case] = []
    every: dict[str, list[Case]] = {}
    for m in models:
        if isinstance(m, Case):
            out.append(m)
            continue
        library, _, rest = m.partition(":")
        if library not in every:
            every[library] = cases([library])
        if not rest:
            out += every[library]
            continue
        hit = [c for c in every[library] if rest in (c.family, c.model)]
        timm = _import("timm") if library == "timm" and not hit else None
        if timm is not None and timm.is_model(rest):
            family = next(
                (f for f in timm.list_modules() if timm.models.is_model_in_modules(rest, [f])), "?"
            )
            cfg = timm.get_pretrained_cfg(rest)
            side = int((getattr(cfg, "input_size", None) or (3, 224, 224))[-1])
            hit = [_timm_case(timm, family, rest, side, {}, note="at its default input")]
        if not hit:
            raise ValueError(f"{m!r} names no library, family or model of the sweep")
        out += hit
    return out


# -- running ----------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    """The exception's type and first line; where it has no message, where it was raised."""
    text = str(e).strip().splitlines()
    if text:
        return f"{type(e).__name__}: {text[0]}"
    tb = traceback.extract_tb(e.__traceback__)
    inside = [f for f in tb if "/torch/" not in f.filename] or tb
    where = f" (raised in {inside[-1].name}, {Path(inside[-1].filename).name})" if inside else ""
    return f"{type(e).__name__}{where}"


def _refusal_note(model: nn.Module | None, refused: dict[str, str]) -> str:
    """One line per refused module type: ``refused: LambdaLayer x3: <reason>``."""
    counts: Counter[tuple[str, str]] = Counter()
    for name, why in refused.items():
        try:
            what = type(model.get_submodule(name)).__name__ if model is not None else name
        except AttributeError:
            what = name
        counts[(what, why)] += 1
    return "; ".join(
        f"refused: {what}{f' x{n}' if n > 1 else ''}: {why}"
        for (what, why), n in sorted(counts.items())
    )


def _unplaced(r: Record) -> str | None:
    """Why a self-attention record's tokens are not placed on the image, or None.

    Placed: the record states where its queries or its keys lie (``query_size`` or
    ``key_size``; class attention has keys on the image and a named query)."""
    if r.meta.get("tokens_unplaced"):
        return "no layout"
    if r.meta.get("tokens_unnamed"):
        return "leading tokens not named"
    for grid in ("key_size", "query_size"):
        try:
            getattr(r, grid)
        except ValueError:
            continue
        return None
    return "no grid"


def _classify(row: CoverageRow, rec: Recording, model: nn.Module) -> None:
    row.kinds = dict(Counter(r.kind for r in rec.values()))
    why = {n: _unplaced(r) for n, r in rec.items() if r.kind == "self"}
    unplaced = [(rec[n], w) for n, w in why.items() if w is not None]
    row.unplaced = len(unplaced)
    row.placed = len(why) - row.unplaced
    row.unrecorded = dict(rec.unrecorded)
    row.refused = dict(rec.refused)
    row.failed = {
        c.name: f"{c.what} (error {c.error:.3g}, tolerance {c.tolerance:g})"
        for c in rec.checks
        if not c.ok
    }
    notes = []
    if row.unrecorded or row.failed:
        row.status = PARTIAL
        notes += [f"not recorded: {n}: {why}" for n, why in row.unrecorded.items()]
        notes += [f"check failed: {n}: {what}" for n, what in row.failed.items()]
    elif row.refused:
        row.status = REFUSED
    elif not len(rec):
        row.status = NO_ATTENTION
        notes += row.warnings or ["no record, no refusal, nothing unrecorded"]
    elif unplaced:
        row.status = RECORDED_NOT_PLACED
        counts = Counter((w, r.module_type) for r, w in unplaced)
        for reason in sorted({w for w, _ in counts}):
            what = ", ".join(f"{t} ({n})" for (w, t), n in sorted(counts.items()) if w == reason)
            notes.append(f"unplaced ({reason}): {what}")
    else:
        row.status = RECORDED
    if row.refused:
        notes.append(_refusal_note(model, row.refused))
    row.note = _join(row.note, *notes)


def _call(case: Case, model: nn.Module, x: torch.Tensor) -> Any:
    return case.forward(model, x) if case.forward is not None else model(x)


def _without_capture(case: Case, model: nn.Module, x: torch.Tensor) -> str:
    """Whether the model's forward fails without a capture too (who is to blame)."""
    try:
        with torch.no_grad():
            _call(case, model, x)
    except Exception as e:
        return f"fails without a capture too ({_first_line(e)})"
    return "runs without a capture: the capture broke it"


def run_case(case: Case, *, batch: int = 1) -> CoverageRow:
    """Build ``case``'s model, call it on ``batch`` random images inside a capture, and
    classify what the capture found (never raises for the model's own failures)."""
    row = CoverageRow(
        case.library,
        case.family,
        case.model,
        case.input_size,
        ERROR,
        overrides=case.overrides,
        note=case.note,
    )
    if case.skip is not None:
        row.status = case.skip if case.skip.startswith("skipped") else SKIPPED
        row.note = _join(case.note, case.skip if case.skip != row.status else "")
        return row
    start = time.perf_counter()
    stage = "build"
    model: nn.Module | None = None
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CaptureWarning)
        try:
            torch.manual_seed(0)
            model = case.build().eval()
            x = torch.randn(batch, 3, *case.input_size)
            stage = "capture"
            cap = capture(model)
            stage = "forward"
            with cap as rec, torch.no_grad():
                _call(case, model, x)
                stage = "close"  # the capture's exit may say: no attention was applied
        except Exception as e:
            # by the error's type, never its wording: capture's own verdicts, raised when
            # it is made or closed (a model's forward may raise anything)
            ours = stage in ("capture", "close")
            if ours and isinstance(e, AllRefusedError):
                row.status = REFUSED
                row.refused = _refusals(model) if model is not None else {}
                row.note = _join(row.note, _refusal_note(model, row.refused) or str(e))
            elif ours and isinstance(e, NoAttentionError):
                row.status = NO_ATTENTION
            else:
                row.note = _join(row.note, f"{stage}: {_first_line(e)}")
                if stage == "forward" and model is not None:
                    row.note = _join(row.note, _without_capture(case, model, x))
        else:
            row.warnings = _messages(caught)
            _classify(row, rec, model)
        row.warnings = row.warnings or _messages(caught)
    row.seconds = time.perf_counter() - start
    return row


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, CaptureWarning)]


def _refusals(model: nn.Module) -> dict[str, str]:
    return {
        n: spec.reason for n, _, spec in find_attention_modules(model) if spec.kind == "refused"
    }


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def sweep(
    models: Iterable[Case | str] | None = None, *, batch: int = 1, progress: bool = False
) -> list[CoverageRow]:
    """Capture every model of the zoo (or of ``models``) once and classify what was found.

    Args:
        models: None for the whole zoo (:func:`cases`), else :class:`Case` objects and/or
            names: a library (``"timm"``, ``"torchvision"``, ``"transformers"``),
            ``"library:family"`` (``"timm:maxxvit"``), or ``"timm:<model name>"``.
        batch: images per forward.
        progress: print one line per model to stderr as it finishes.

    Returns:
        one :class:`CoverageRow` per model, in the order of the cases.
    """
    rows = []
    for case in _select(models):
        row = run_case(case, batch=batch)
        rows.append(row)
        if progress:
            print(
                f"{row.seconds:6.2f}s  {row.library}:{row.family}  {row.model}  {row.status}"
                f"{'  ' + row.note if row.note else ''}",
                file=sys.stderr,
                flush=True,
            )
    return rows


# -- reporting --------------------------------------------------------------------------------
def _rank(status: str) -> int:
    if status.startswith("skipped"):
        return STATUSES.index(SKIPPED)
    return STATUSES.index(status) if status in STATUSES else 0


def family_status(rows: Iterable[CoverageRow]) -> dict[tuple[str, str], str]:
    """(library, family) -> the worst status of its rows."""
    out: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r.library, r.family)
        if key not in out or _rank(r.status) < _rank(out[key]):
            out[key] = r.status
    return out


def summary(rows: Iterable[CoverageRow]) -> dict[str, Any]:
    """Counts over the rows and over the families.

    Keys: ``rows`` and ``families`` (how many), ``by_status`` and ``families_by_status``
    (status -> count), ``attention_bearing`` (families where a capture found attention),
    ``exact`` and ``placed`` (attention-bearing families whose status is in :data:`EXACT`,
    resp. ``"recorded"``), ``exact_share`` and ``placed_share`` (of the attention-bearing;
    None without any), ``partial``, ``refused``, ``no_attention``, ``errors``,
    ``skipped`` (families), ``seconds`` (summed over the rows).
    """
    rows = list(rows)
    fams = family_status(rows)
    bearing = {(r.library, r.family) for r in rows if r.attention}
    by_family = Counter(("skipped" if s.startswith("skipped") else s) for s in fams.values())
    exact = sum(1 for k in bearing if fams[k] in EXACT)
    placed = sum(1 for k in bearing if fams[k] == RECORDED)
    n = len(bearing)
    return {
        "rows": len(rows),
        "families": len(fams),
        "by_status": dict(Counter(r.status for r in rows)),
        "families_by_status": dict(by_family),
        "attention_bearing": n,
        "exact": exact,
        "placed": placed,
        "exact_share": exact / n if n else None,
        "placed_share": placed / n if n else None,
        "partial": by_family.get(PARTIAL, 0),
        "refused": by_family.get(REFUSED, 0),
        "no_attention": by_family.get(NO_ATTENTION, 0),
        "errors": by_family.get(ERROR, 0),
        "skipped": by_family.get("skipped", 0),
        "seconds": sum(r.seconds for r in rows),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _records(kinds: dict[str, int]) -> str:
    order = [k for k in KINDS if k in kinds] + sorted(set(kinds) - set(KINDS))
    return ", ".join(f"{k} {kinds[k]}" for k in order) or "-"


def markdown_table(rows: Iterable[CoverageRow], *, seconds: bool = False) -> str:
    """The rows as a Markdown table, one line each, in their order.

    Columns: library, family, model (with its overrides), input, status, records by kind,
    self-attention records placed / unplaced, note; ``seconds=True`` adds the time per
    model (left out by default so that the table is the same from run to run).
    """
    head = ["library", "family", "model", "input", "status", "records", "placed / unplaced"]
    head += ["s"] if seconds else []
    head.append("note")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if h == "s" else "---" for h in head) + "|",
    ]
    for r in rows:
        model = f"`{r.model}`" + (f" ({r.overrides})" if r.overrides else "")
        size = f"{r.input_size[0]}x{r.input_size[1]}" if r.input_size[0] else "-"
        spots = f"{r.placed} / {r.unplaced}" if r.kinds.get("self") else "-"
        cells = [r.library, r.family, model, size, r.status, _records(r.kinds), spots]
        cells += [f"{r.seconds:.2f}"] if seconds else []
        cells.append(r.note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_section(rows: Iterable[CoverageRow]) -> str:
    """What the README shows between its coverage markers: the counts in a sentence, then
    :func:`markdown_table` (the same from run to run: no timings)."""
    rows = list(rows)
    s = summary(rows)
    share = "-" if s["exact_share"] is None else f"{s['exact_share']:.1%}"
    placed = "-" if s["placed_share"] is None else f"{s['placed_share']:.1%}"
    sentence = (
        f"Swept with random weights, one image each ({s['rows']} models of {s['families']} "
        f"families: every timm model module, torchvision's transformers, Hugging Face's "
        f"vision encoders): of the {s['attention_bearing']} families with attention, "
        f"**{s['exact']} are recorded exactly ({share})** and {s['placed']} of them also "
        f"placed on the image ({placed}); {s['partial']} partial, {s['refused']} refused "
        f"by design, {s['errors']} errors; {s['no_attention']} families apply no attention "
        "and are told so. Regenerate with `python scripts/coverage_table.py --write "
        "README.md`; `tests/test_coverage.py` keeps it current."
    )
    return sentence + "\n\n" + markdown_table(rows)
