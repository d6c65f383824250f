"""Which map tells the truth: every explanation map scored with the same measures,
against an object mask and against the model itself, with baselines and intervals.

Two families of measure (all per image, then a mean with a bootstrap interval):

Where the map puts its weight, against the object's mask (no model needed):

- **pointing game** (Zhang et al., ECCV 2016; TorchRay's mask form): the map points at
  its maximal pixel; a hit when that pixel lies within ``tolerance`` pixels of an object
  pixel (0: is one). Ties go to the tied pixel nearest their centroid, which makes the
  rule exact at both ends: a map maximal on the whole object points at the object, and
  a constant map points at the centre pixel, exactly as the centre baseline does, so it
  scores the centre baseline and no better.
- **energy in mask**: ``sum_{p in mask} m_p / sum_p m_p`` of the map spread over its
  pixels (negative values count as zero; a map with no positive mass scores 0). A
  constant map scores the mask's share of the image.
- **60%-mass Jaccard** (Caron et al., "Emerging Properties in Self-Supervised Vision
  Transformers", ICCV 2021, the head-mask measure): the smallest set of highest pixels
  holding ``mass`` (60%) of the map's positive mass, ties at the threshold included,
  compared with the mask, ``|S ∩ M| / |S ∪ M|``.

What the model does when the map's pixels are taken away or given back (one forward per
step; pixels ranked by the map, ties broken by one fixed random order, so a constant map
ranks like a random one):

- **deletion** and **insertion** (Petsiuk et al., "RISE", BMVC 2018): the probability of
  the true class as the top fraction ``f`` of pixels is set to ``fill`` (deletion; lower
  area under the curve is better) or copied from the image into a blurred copy of it
  (insertion; higher is better);
- **positive and negative perturbation** (Chefer et al., "Transformer Interpretability
  Beyond Attention Visualization", CVPR 2021): top-1 accuracy as the most (positive;
  lower is better) or the least (negative; higher is better) relevant fraction ``f`` of
  pixels is set to ``fill``. Positive perturbation reads the same images as deletion,
  accuracy instead of probability.

The area under each curve is the trapezoid rule over ``fractions`` (default 0, 0.1,
..., 1), so it lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..running import model_device
from .spatial import _finite, _map_batch, _mask_batch, center_prior

__all__ = [
    "LOWER_IS_BETTER",
    "SCORES",
    "MethodScores",
    "baseline_maps",
    "bootstrap_interval",
    "energy_in_mask",
    "mass_jaccard",
    "perturbation_curves",
    "perturbed",
    "pixel_maps",
    "pointing_hits",
    "pointing_point",
    "random_maps",
    "reference_logits",
    "score_methods",
]

#: the scores of :func:`score_methods`, in table order: key -> column title
SCORES = {
    "pointing": "pointing game",
    "pointing_tol": "pointing game ±{tol:g} px",
    "energy": "energy in mask",
    "jaccard": "60%-mass Jaccard",
    "deletion": "deletion AUC ↓",
    "insertion": "insertion AUC",
    "positive": "positive perturbation AUC ↓",
    "negative": "negative perturbation AUC",
}
#: scores where a smaller value is the better map
LOWER_IS_BETTER = frozenset({"deletion", "positive"})
#: the fractions of pixels removed or inserted, by default
FRACTIONS = tuple(i / 10 for i in range(11))
CENTRE, RANDOM = "centre baseline", "random baseline"


def _batch(maps: Any, name: str = "maps") -> torch.Tensor:
    """N x h x w float64 on the CPU, refused with a clear message if not finite."""
    return _finite(_map_batch(maps, name), name)


def _masks(masks: Any, n: int) -> torch.Tensor:
    """N x H x W bool masks on the CPU (:func:`~attnviz.metrics.spatial` checks the shape)."""
    return _mask_batch(masks, n).detach().to("cpu").bool()


def pixel_maps(maps: Any, size: Sequence[int]) -> torch.Tensor:
    """Maps at image resolution, each pixel taking the value of the cell it lies in (cell
    (i, j) of an h x w map owns pixels ``i H/h .. (i + 1) H/h`` by ``j W/w .. (j + 1)
    W/w``, as every score here reads it): N x H x W float64."""
    t = _batch(maps)
    h, w = int(size[0]), int(size[1])
    if t.shape[-2:] == (h, w):
        return t
    return F.interpolate(t[:, None], size=(h, w), mode="nearest")[:, 0]


def pointing_point(maps: Any, size: Sequence[int]) -> torch.Tensor:
    """Where each map points, in image pixels (edge-based): the centre of its maximal
    pixel (the map spread over the image by :func:`pixel_maps`). Among tied pixels, the
    one nearest their centroid (then the first in row-major order): so a map that is
    maximal on the whole object points at one of the object's pixels, and a constant map
    points at the centre pixel, exactly where the centre baseline points. N x 2 (x, y)
    float64."""
    p = pixel_maps(maps, size)
    _, h, w = p.shape
    is_max = p == p.amax(dim=(1, 2), keepdim=True)
    ys = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w) + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w) + 0.5
    count = is_max.sum(dim=(1, 2)).double()
    cx = (is_max * xs).sum(dim=(1, 2)) / count
    cy = (is_max * ys).sum(dim=(1, 2)) / count
    d2 = (xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2
    flat = torch.where(is_max, d2, torch.inf).flatten(1).argmin(dim=1)
    return torch.stack([xs.flatten()[flat], ys.flatten()[flat]], dim=1)


def pointing_hits(maps: Any, masks: Any, *, tolerance: float = 0) -> torch.Tensor:
    """Pointing game against masks: does :func:`pointing_point` lie within ``tolerance``
    pixels (Euclidean, to the nearest point of an object pixel's square) of the object?

    Returns:
        N bools (a bool tensor).

    Raises:
        ValueError: bad shapes, a negative tolerance, NaN or inf in the maps.
    """
    t = _batch(maps)
    m = _masks(masks, len(t))
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    big_h, big_w = m.shape[-2:]
    point = pointing_point(t, (big_h, big_w))
    cols = torch.arange(big_w, dtype=torch.float64)
    rows = torch.arange(big_h, dtype=torch.float64)
    # distance from the point to pixel square [j, j + 1] x [i, i + 1] along each axis
    dx = (cols[None] - point[:, :1]).clamp_min(0) + (point[:, :1] - cols[None] - 1).clamp_min(0)
    dy = (rows[None] - point[:, 1:]).clamp_min(0) + (point[:, 1:] - rows[None] - 1).clamp_min(0)
    d2 = dy[:, :, None] ** 2 + dx[:, None, :] ** 2
    return (m & (d2 <= tolerance**2 + 1e-9)).flatten(1).any(dim=1)


def energy_in_mask(maps: Any, masks: Any) -> torch.Tensor:
    """Share of each map's positive mass on the object's pixels (N float64 in [0, 1])."""
    t = _batch(maps)
    m = _masks(masks, len(t))
    p = pixel_maps(t, m.shape[-2:]).clamp_min(0)
    total = p.sum(dim=(1, 2))
    inside = (p * m).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-300), 0.0)


def mass_jaccard(maps: Any, masks: Any, *, mass: float = 0.6) -> torch.Tensor:
    """Jaccard of each map's ``mass`` set with the mask (DINO's measure; N float64).

    The set holds the highest pixels, from the top down, until their sum reaches ``mass``
    of the map's positive mass; every pixel equal to the last one taken is included, so
    a constant map selects the whole image. A map with no positive mass selects nothing.
    """
    if not (isinstance(mass, (int, float)) and 0 < mass <= 1):
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    t = _batch(maps)
    m = _masks(masks, len(t))
    p = pixel_maps(t, m.shape[-2:]).clamp_min(0).flatten(1)
    values, _ = p.sort(dim=1, descending=True)
    cum = values.cumsum(dim=1)
    total = cum[:, -1:]
    # first position where the running sum reaches the mass (rounding-safe)
    k = (cum < mass * total * (1 - 1e-12)).sum(dim=1, keepdim=True).clamp_max(p.shape[1] - 1)
    threshold = values.gather(1, k)
    chosen = (p >= threshold) & (p > 0)
    truth = m.flatten(1)
    inter = (chosen & truth).sum(dim=1).double()
    union = (chosen | truth).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)


def random_maps(n: int, size: Sequence[int], *, seed: int = 0) -> torch.Tensor:
    """Uniform noise maps at image resolution: the map that knows nothing (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(size[0]), int(size[1]), generator=gen, dtype=torch.float64)


def baseline_maps(n: int, size: Sequence[int], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The two maps that know nothing, scored beside every method: :data:`CENTRE` (a
    Gaussian centre prior, which points exactly at the image centre) and :data:`RANDOM`
    (uniform noise, seeded), N x H x W."""
    h, w = int(size[0]), int(size[1])
    return {CENTRE: center_prior(n, (h, w)), RANDOM: random_maps(n, (h, w), seed=seed)}


def _ranks(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """Rank of each pixel (0 = most salient), ties in one fixed random order: N x P."""
    n, p = pixels.shape
    tie = torch.randperm(p, generator=torch.Generator().manual_seed(seed))
    order = pixels[:, tie].argsort(dim=1, descending=True, stable=True)
    order = tie[order]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p).expand(n, p).contiguous())
    return ranks


def _step_images(
    images: torch.Tensor,
    blurred: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    kind: str,
    fill: float,
) -> torch.Tensor:
    """N x F x C x H x W: what each of ``counts`` (F pixel counts) shows the model.

    ``"deletion"`` (and positive perturbation): the ``count`` most salient pixels set to
    ``fill``; ``"negative"``: the ``count`` least salient set to ``fill``;
    ``"insertion"``: the ``count`` most salient copied into the blurred image. ``ranks``
    is N x 1 x H x W (0 = most salient)."""
    pixels = ranks.shape[-2] * ranks.shape[-1]
    k = counts[None, :, None, None, None]
    r, x = ranks[:, None], images[:, None]
    if kind == "negative":
        chosen = (r >= pixels - k).to(images.dtype)
    else:
        chosen = (r < k).to(images.dtype)
    if kind == "insertion":
        return blurred[:, None] * (1 - chosen) + x * chosen
    return x * (1 - chosen) + fill * chosen


def perturbed(
    images: torch.Tensor,
    maps: Any,
    fraction: float,
    *,
    kind: str = "deletion",
    fill: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """The images one step of a curve of :func:`perturbation_curves` shows the model.

    Args:
        images: N x C x H x W.
        maps: N x h x w maps ranking the pixels.
        fraction: of the pixels, in [0, 1].
        kind: ``"deletion"`` (and positive perturbation): the most salient pixels set to
            ``fill``; ``"negative"``: the least salient set to ``fill``; ``"insertion"``:
            the most salient copied into the blurred image.
        fill, seed: as for :func:`perturbation_curves`.
    """
    if kind not in ("deletion", "negative", "insertion"):
        raise ValueError(f"kind must be deletion, negative or insertion, got {kind!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    n, _, h, w = images.shape
    ranks = _ranks(pixel_maps(_batch(maps), (h, w)).flatten(1), seed).reshape(n, 1, h, w)
    count = torch.tensor([round(fraction * h * w)])
    blurred = _blurred(images) if kind == "insertion" else images
    return _step_images(images, blurred, ranks, count, kind, fill)[:, 0]


def _blurred(images: torch.Tensor) -> torch.Tensor:
    """The insertion curve's start: a Gaussian blur of sigma 5 px at 224 px (scaled with
    the longer side) and kernel side 2 * round(2.2 sigma) + 1 (23 at 224 px, so the kernel
    reaches 2.2 sigma). RISE's code uses sigma 5 with an 11-pixel kernel (about one sigma);
    the shipped models' insertion scores in the manifest were measured with this one."""
    from torchvision.transforms.functional import gaussian_blur

    side = max(images.shape[-2:])
    sigma = 5.0 * side / 224
    kernel = max(3, 2 * round(1.1 * sigma * 2) + 1)
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under N x F curves over ``fractions`` (normalised to [0, 1])."""
    span = float(fractions[-1] - fractions[0]) or 1.0
    return torch.trapezoid(curve, fractions, dim=1) / span


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    maps: Any,
    *,
    fractions: Sequence[float] = FRACTIONS,
    fill: float = 0.0,
    batch_size: int = 512,
    seed: int = 0,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Deletion, insertion, positive and negative perturbation curves of each image.

    Args:
        model: the classifier the maps explain (eval mode; its device is used).
        images: N x C x H x W inputs, as the model takes them.
        labels: N true classes (the class whose probability and accuracy are read).
        maps: N x h x w maps (any resolution; each pixel takes its cell's value).
        fractions: increasing fractions of the pixels removed / inserted, in [0, 1].
        fill: the value removed pixels get, in the model's input space. The default 0
            is what RISE's code writes (zeros in the network's normalised input): for a
            network that normalises its input that is the data set's mean colour, not
            black; for attnviz's shipped models, which take unnormalised [0, 1] images,
            it is black.
        batch_size: perturbed images per forward.
        seed: of the tie-breaking order.
        reference: :func:`reference_logits` of the same model, images and fill, when
            several methods' curves are computed (the steps at 0 and 1 are the same
            images for every map); computed here when None.

    Returns:
        ``{"deletion", "insertion": N x F probabilities of the true class,
        "positive", "negative": N x F 0/1 correct}`` (float64, CPU), and the same four
        as N areas under the curve with the suffix ``"_auc"``.
    """
    t = _batch(maps)
    n, c, h, w = images.shape
    if len(t) != n or len(labels) != n:
        raise ValueError(f"got {n} images, {len(labels)} labels and {len(t)} maps; one each")
    f = torch.as_tensor([float(v) for v in fractions], dtype=torch.float64)
    if len(f) < 2 or (f[1:] <= f[:-1]).any() or f[0] < 0 or f[-1] > 1:
        raise ValueError(f"fractions must increase within [0, 1], got {list(fractions)}")
    device = model_device(model)
    ranks = _ranks(pixel_maps(t, (h, w)).flatten(1), seed).reshape(n, 1, h, w)
    counts = torch.round(f * h * w).long()
    blurred = _blurred(images)
    ref = reference if reference is not None else reference_logits(model, images, fill=fill)
    # steps that remove or insert nothing or everything show every map the same images
    # (the image, the blurred image, the filled image): read from ``ref``, not recomputed
    ends = {0: "image", h * w: "filled"}
    middle = [j for j, k in enumerate(counts.tolist()) if k not in ends]
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("deletion", "insertion", "negative")}
    out["positive"] = []
    per = max(1, batch_size // max(1, len(middle)))
    mid = counts[middle]
    for i in range(0, n, per):
        x, b, r = images[i : i + per], blurred[i : i + per], ranks[i : i + per]
        y = torch.as_tensor(labels[i : i + per]).to("cpu")
        for key in ("deletion", "negative", "insertion"):
            v = _step_images(x, b, r, mid, key, fill)
            logits = torch.empty(len(x), len(f), ref["image"].shape[1])
            if middle:
                computed = model(v.reshape(-1, c, h, w).to(device)).float().cpu()
                logits[:, middle] = computed.reshape(len(x), len(middle), -1)
            for j, k in enumerate(counts.tolist()):
                if k in ends:
                    # insertion's "nothing inserted" is the blurred image, "all" the image
                    which = ends[k] if key != "insertion" else ("blurred" if k == 0 else "image")
                    logits[:, j] = ref[which][i : i + per]
            target = y[:, None].expand(-1, len(f))
            if key != "negative":
                prob = logits.softmax(-1).gather(2, target[..., None])[..., 0]
                out[key].append(prob.double())
            if key != "insertion":
                correct = (logits.argmax(-1) == target).double()
                out["positive" if key == "deletion" else key].append(correct)
    curves = {k: torch.cat(v) for k, v in out.items()}
    curves.update({f"{k}_auc": _auc(v, f) for k, v in list(curves.items())})
    return curves


@torch.no_grad()
def reference_logits(
    model: nn.Module, images: torch.Tensor, *, fill: float = 0.0, batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """The model's logits (CPU, float32) for the images every curve starts or ends on:
    ``"image"`` itself, ``"filled"`` (every pixel set to ``fill``) and ``"blurred"``
    (insertion's start)."""
    device = model_device(model)
    out = {}
    for key, x in (
        ("image", images),
        ("filled", torch.full_like(images, fill)),
        ("blurred", _blurred(images)),
    ):
        out[key] = torch.cat(
            [
                model(x[i : i + batch_size].to(device)).float().cpu()
                for i in range(0, len(x), batch_size)
            ]
        )
    return out


def bootstrap_interval(
    values: Any, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-image values and its percentile bootstrap
    interval (``resamples`` resamples of the images, seeded)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not len(v):
        raise ValueError("no values to average")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(v), (resamples, len(v)), generator=gen)
    means = v[idx].mean(dim=1)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(v.mean()), float(lo), float(hi)


@dataclass
class MethodScores:
    """Scores of several methods' maps on the same images: per-image values and their
    means with bootstrap intervals.

    Attributes:
        per_image: method -> score key (:data:`SCORES`) -> N per-image values.
        summary: method -> score key -> (mean, low, high).
        curves: method -> ``"deletion"``/``"insertion"``/... -> N x F curves.
        fractions: the fractions of the curves.
        tolerance: of the tolerant pointing game, in pixels.
        n: images.
    """

    per_image: dict[str, dict[str, torch.Tensor]]
    summary: dict[str, dict[str, tuple[float, float, float]]]
    curves: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    fractions: tuple[float, ...]
    tolerance: float
    n: int

    def columns(self) -> list[str]:
        return [k for k in SCORES if any(k in s for s in self.summary.values())]

    def title(self, key: str) -> str:
        return SCORES[key].format(tol=self.tolerance)

    def best(self, key: str, *, exclude_baselines: bool = True) -> str:
        """The method with the best mean on score ``key``."""
        pool = {
            m: s[key][0]
            for m, s in self.summary.items()
            if key in s and not (exclude_baselines and m in (CENTRE, RANDOM))
        }
        if not pool:
            raise ValueError(f"no method has score {key!r}")
        pick = min if key in LOWER_IS_BETTER else max
        return pick(pool, key=pool.__getitem__)

    def table(self, *, intervals: bool = True, label: str = "method") -> str:
        """Markdown: one row per method, one column per score, ``mean [low, high]``."""
        cols = self.columns()
        head = f"| {label} | " + " | ".join(self.title(k) for k in cols) + " |"
        lines = [head, "|---|" + "---:|" * len(cols)]
        for method, s in self.summary.items():
            cells = []
            for k in cols:
                if k not in s:
                    cells.append("")
                    continue
                mean, lo, hi = s[k]
                cells.append(f"{mean:.3f} [{lo:.2f}, {hi:.2f}]" if intervals else f"{mean:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def score_methods(
    maps_by_method: Mapping[str, Any],
    masks: Any,
    *,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    tolerance: float = 4,
    fractions: Sequence[float] = FRACTIONS,
    baselines: bool = True,
    fill: float = 0.0,
    level: float = 0.95,
    seed: int = 0,
    batch_size: int = 512,
) -> MethodScores:
    """Score every method's maps on the same images, with the centre and random baselines.

    Every method gets the pointing game (exact and within ``tolerance`` pixels), energy in
    mask and 60%-mass Jaccard; with ``model``, ``images`` and ``labels`` also deletion,
    insertion, positive and negative perturbation AUC (one forward per image, step and
    curve: 3 x len(fractions) per image and method). Each score is averaged over images
    with a percentile bootstrap interval at ``level``.

    Args:
        maps_by_method: method name -> N x h x w maps (resolutions may differ).
        masks: N x H x W object masks (H x W: the image size).
        model, images, labels: the classifier and its inputs, for the perturbation scores.
        tolerance: of the tolerant pointing game, in pixels (4 px at 64 px is TorchRay's
            15 px at 224).
        fractions, fill: of :func:`perturbation_curves`.
        baselines: add :func:`baseline_maps` as methods.
        level: of the intervals.
        seed: of the random baseline, the tie-breaking order and the bootstrap.
        batch_size: perturbed images per forward.

    Raises:
        ValueError: no methods, counts that differ, half of model / images / labels.
    """
    if not maps_by_method:
        raise ValueError("maps_by_method must name at least one method's maps")
    parts = (model is None, images is None, labels is None)
    if len(set(parts)) > 1:
        raise ValueError("pass model, images and labels together (the perturbation scores)")
    m = torch.as_tensor(masks)
    m = _masks(m, len(m) if m.dim() == 3 else 1)
    n, size = len(m), (int(m.shape[-2]), int(m.shape[-1]))
    methods = dict(maps_by_method)
    if baselines:
        methods.update(baseline_maps(n, size, seed=seed))
    per_image: dict[str, dict[str, torch.Tensor]] = {}
    curves: dict[str, dict[str, torch.Tensor]] = {}
    ref = None
    if model is not None:
        ref = reference_logits(model, images, fill=fill, batch_size=batch_size)  # type: ignore[arg-type]
    for name, maps in methods.items():
        t = _batch(maps, f"maps of {name!r}")
        if len(t) != n:
            raise ValueError(f"{name!r} has {len(t)} maps for {n} masks; one map per image")
        s = {
            "pointing": pointing_hits(t, m).double(),
            "pointing_tol": pointing_hits(t, m, tolerance=tolerance).double(),
            "energy": energy_in_mask(t, m),
            "jaccard": mass_jaccard(t, m),
        }
        if model is not None:
            c = perturbation_curves(
                model,
                images,  # type: ignore[arg-type]
                labels,  # type: ignore[arg-type]
                t,
                fractions=fractions,
                fill=fill,
                batch_size=batch_size,
                seed=seed,
                reference=ref,
            )
            s.update({k: c[f"{k}_auc"] for k in ("deletion", "insertion", "positive", "negative")})
            curves[name] = {k: v for k, v in c.items() if not k.endswith("_auc")}
        per_image[name] = s
    summary = {
        name: {k: bootstrap_interval(v, level=level, seed=seed) for k, v in s.items()}
        for name, s in per_image.items()
    }
    return MethodScores(
        per_image, summary, curves, tuple(float(v) for v in fractions), float(tolerance), n
    )
