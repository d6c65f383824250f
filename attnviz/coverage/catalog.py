"""The zoo the sweep runs: one :class:`Case` per model (timm's families, torchvision's
transformers, Hugging Face encoders with tiny configs), with how to build and call it."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["HF_CASES", "TIMM_CASES", "Case", "cases"]


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
