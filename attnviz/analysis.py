"""Attention over whole data sets: channel statistics per class, every spatial map, cost.

The class-wise picture of channel attention: mean excitation per class, block by block.

Hu, Shen, Albanie, Sun and Wu, "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI
2020, section 7.2 ("Role of excitation"): the mean excitation s_c (eq. 3) of each
channel, over the images of one class, plotted for several classes and for all
images. Early blocks excite channels the same way for every class (shared low-level
features); late blocks become class-specific; the very last blocks saturate (most
s_c near 1) and matter less.

    stats = channel_stats(model, images, labels)     # one pass, memory flat in N
    stats.specificity()                              # {block: F-ratio-like score}
    plot_class_excitation(stats)                     # the paper's figure, as a Figure

Works for every channel attention :func:`attnviz.capture` knows (SE, CBAM's Mc,
torchvision's ``SqueezeExcitation``).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

from ._compat import renamed_kwargs
from .capture import capture
from .records import ChannelRecord, SpatialRecord
from .running import inference, model_device

__all__ = ["ChannelStats", "channel_stats", "forward_cost", "plot_class_excitation", "spatial_maps"]

_EPS = 1e-12


@dataclass
class ChannelStats:
    """Per-class moments of the excitation s (B x C) of every channel-attention block.

    Attributes:
        names: block (record) names, in forward order.
        mean: name -> (K x C) mean excitation of each class; NaN rows for empty classes.
        var_within: name -> (K x C) within-class (population) variance; NaN for empty
            classes.
        overall_mean: name -> (C,) mean excitation over all images.
        counts: (K,) images per class.
        class_names: K names, for legends (default ``"0"`` .. ``"K-1"``).
    """

    names: list[str]
    mean: dict[str, torch.Tensor]
    var_within: dict[str, torch.Tensor]
    overall_mean: dict[str, torch.Tensor]
    counts: torch.Tensor
    class_names: list[str] = field(default_factory=list)

    def channels(self, name: str) -> int:
        """C, the number of channels of block ``name``."""
        return self.mean[name].shape[1]

    def specificity(self) -> dict[str, float]:
        """How class-specific each block's excitation is: an F-ratio-like number.

        Over the K' classes with at least one image, for channel c of a block::

            between_c = 1/K' sum_k (m_kc - mean_k' m_k'c)^2     (variance of class means)
            within_c  = 1/K' sum_k v_kc                          (mean within-class var.)
            S = mean_c between_c / (mean_c within_c + 1e-12)

        m_kc and v_kc are :attr:`mean` and :attr:`var_within`. S is 0 when every class
        has the same mean excitation (exactly 0.0 when the excitation does not depend
        on the image at all) and grows as classes separate relative to the spread
        inside a class. NaN with fewer than two non-empty classes.

        Returns:
            block name -> S, in forward order.
        """
        keep = self.counts > 0
        if int(keep.sum()) < 2:
            return {name: math.nan for name in self.names}
        return {
            name: _f_ratio(self.mean[name][keep], self.var_within[name][keep])
            for name in self.names
        }

    def to_table(self) -> str:
        """A Markdown table: block, channels, specificity."""
        spec = self.specificity()
        rows = ["| block | channels | specificity |", "|---|---:|---:|"]
        rows += [f"| {n} | {self.channels(n)} | {spec[n]:.4g} |" for n in self.names]
        return "\n".join(rows)


def _f_ratio(means: torch.Tensor, within: torch.Tensor) -> float:
    """mean_c var_k(means) / (mean_c mean_k(within) + eps), shift-exact for equal rows."""
    centred = means - means[:1]  # exactly 0 where every class has the same mean
    between = centred.var(dim=0, unbiased=False).mean()
    return float(between / (within.mean() + _EPS))


class _Moments:
    """Per-class sums of s - shift and (s - shift)^2 in float64, grown as labels appear.

    The shift (the first image's weights) keeps the variance numerically stable and
    makes weights that never change give means and variances that are exact.
    """

    def __init__(self, classes: int) -> None:
        # set together by the first add()
        self.shift: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.classes = classes

    def add(self, weights: torch.Tensor, labels: torch.Tensor) -> None:
        w = weights.detach().to("cpu", torch.float64)
        if self.shift is None:
            self.shift = w[0].clone()
            self.sum = torch.zeros(self.classes, w.shape[1], dtype=torch.float64)
            self.sumsq = torch.zeros_like(self.sum)
        self._grow(int(labels.max()) + 1)
        assert self.sum is not None and self.sumsq is not None
        d = w - self.shift
        self.sum.index_add_(0, labels, d)
        self.sumsq.index_add_(0, labels, d * d)

    def _grow(self, k: int) -> None:
        assert self.sum is not None and self.sumsq is not None  # after the first add()
        if k > self.sum.shape[0]:
            pad = torch.zeros(k - self.sum.shape[0], self.sum.shape[1], dtype=torch.float64)
            self.sum, self.sumsq = torch.cat([self.sum, pad]), torch.cat([self.sumsq, pad])

    def finish(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean K x C, within-class variance K x C, overall mean C)."""
        self._grow(len(counts))
        assert self.shift is not None and self.sum is not None and self.sumsq is not None
        n = counts.to(torch.float64)[:, None]
        d_mean = self.sum / n  # NaN for empty classes
        var = (self.sumsq / n - d_mean * d_mean).clamp_min(0.0)
        overall = self.shift + self.sum.sum(0) / counts.sum()
        return self.shift + d_mean, var, overall


def _check_labels(labels: Any, n: int | None, classes: int | None) -> torch.Tensor:
    y = torch.as_tensor(labels).detach().cpu()
    if y.dim() != 1 or (n is not None and len(y) != n):
        raise ValueError(
            f"labels must be a 1-D sequence of {n or 'B'} class indices, got shape {tuple(y.shape)}"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {y.dtype}")
    if len(y) and (y.min() < 0 or (classes is not None and y.max() >= classes)):
        raise ValueError(
            f"labels must lie in [0, {classes or 'K'}), got [{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


def _batches(images: Any, labels: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, Any]]:
    """(images, labels) batches from a tensor and labels, or from an iterable of pairs."""
    if labels is None:
        if isinstance(images, torch.Tensor):
            raise ValueError("labels are needed with an image tensor (or pass (x, y) batches)")
        yield from images
        return
    images = torch.as_tensor(images)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    labels = _check_labels(labels, len(images), None)
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def _records_once(model: nn.Module, x: torch.Tensor, kinds: Any, blocks: Any) -> dict[str, Any]:
    """One forward pass under ``capture(kinds=, blocks=)``: the records, each block having run
    exactly once (a block that runs twice cannot be reduced per image)."""
    with torch.no_grad(), capture(model, kinds=kinds, blocks=blocks) as rec:
        model(x)
    for name, r in rec.items():
        if r.calls != 1:
            raise ValueError(
                f"{name} ran {r.calls} times in one forward pass; select blocks that run "
                "once (blocks=)"
            )
    return dict(rec.items())


def _batch_weights(model: nn.Module, x: torch.Tensor, blocks: Any) -> dict[str, torch.Tensor]:
    """One forward pass; the excitation of every block (B x C). The records die here."""
    records = _records_once(model, x, "channel", blocks)
    return {name: cast(ChannelRecord, r).weights for name, r in records.items()}


def _classes(
    num_classes: int | None, class_names: Sequence[Any] | None
) -> tuple[int | None, list[str] | None]:
    names = None
    if class_names is not None:
        if isinstance(class_names, (str, int)):
            raise TypeError(
                f"class_names must be a sequence of names, got {class_names!r}; "
                "pass a count as num_classes="
            )
        names = [str(c) for c in class_names]
        if not names:
            raise ValueError("class_names must name at least one class")
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes={num_classes} but {len(names)} class_names")
        return len(names), names
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes, None


@renamed_kwargs(names="blocks")
def channel_stats(
    model: nn.Module,
    images: torch.Tensor | Iterable[tuple[torch.Tensor, Any]],
    labels: Sequence[int] | torch.Tensor | None,
    *,
    batch_size: int = 256,
    blocks: str | Sequence[str] | None = None,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    class_names: Sequence[Any] | None = None,
    classes: int | Sequence[Any] | None = None,
) -> ChannelStats:
    """Mean and within-class variance of the excitation, per class and block, in one pass.

    The data run through ``model`` batch by batch, each batch under its own
    ``attnviz.capture(model, kinds="channel", blocks=blocks)``; only per-class sums of s
    and s^2 (float64) are kept, so memory does not grow with the number of images. The
    model runs in eval mode under ``torch.no_grad()``; its train/eval flags are restored.

    Args:
        model: a network with channel attention (SE, CBAM, torchvision SE).
        images: network inputs (N, C, H, W); or an iterable of ``(x, y)`` batches (e.g. a
            ``DataLoader``) when ``labels`` is None.
        labels: N integer class indices, or None with batches.
        batch_size: images per forward pass (tensor input).
        blocks: glob pattern(s) selecting blocks, as in ``capture`` (default all).
        device: where the model runs (default: its parameters' device).
        num_classes: K (default: max label + 1, or the length of ``class_names``).
        class_names: K names for the classes (default ``"0"``, ``"1"``, ...).
        classes: 0.1's name for either (a count or names); warns.

    Returns:
        The :class:`ChannelStats`.

    Raises:
        ValueError: no images, bad shapes or labels, a block that runs twice per pass.
        TypeError: non-integer labels.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if classes is not None:
        new = "num_classes" if isinstance(classes, int) else "class_names"
        warnings.warn(
            f"channel_stats: 'classes' was split into num_classes= and class_names= in attnviz "
            f"0.2; pass {new}=",
            FutureWarning,
            stacklevel=3,
        )
        if isinstance(classes, int):
            num_classes = classes if num_classes is None else num_classes
        else:
            class_names = classes if class_names is None else class_names
    k, class_names = _classes(num_classes, class_names)
    device = torch.device(device) if device is not None else model_device(model)
    moments: dict[str, _Moments] = {}
    counts = torch.zeros(k or 0, dtype=torch.long)
    for x, y in _batches(images, labels, batch_size):
        y = _check_labels(y, len(x), k)
        for name, w in _batch_weights(model, x.to(device), blocks).items():
            moments.setdefault(name, _Moments(k or 0)).add(w, y)
        counts = _add_counts(counts, y)
    if not moments:
        raise ValueError("images must hold at least one image")
    return _finish(moments, counts, class_names)


def _add_counts(counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    new = torch.bincount(y, minlength=len(counts))
    if len(new) > len(counts):
        counts = torch.cat([counts, counts.new_zeros(len(new) - len(counts))])
    return counts + new


def _finish(
    moments: dict[str, _Moments], counts: torch.Tensor, names: list[str] | None
) -> ChannelStats:
    mean, var, overall = {}, {}, {}
    for name, m in moments.items():
        mean[name], var[name], overall[name] = m.finish(counts)
    class_names = names or [str(c) for c in range(len(counts))]
    return ChannelStats(list(moments), mean, var, overall, counts, class_names)


# -- the paper's figure ----------------------------------------------------------------------
def _select_blocks(stats: ChannelStats, blocks: str | Sequence[str] | None) -> list[str]:
    if blocks is None:
        return list(stats.names)
    patterns = [blocks] if isinstance(blocks, str) else list(blocks)
    out = [n for n in stats.names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not out:
        raise ValueError(f"blocks {patterns} match none of {stats.names}")
    return out


def _channel_index(channels: int | Sequence[int] | None, c: int) -> torch.Tensor:
    if channels is None:
        return torch.arange(c)
    if isinstance(channels, int):
        return torch.arange(min(channels, c))
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    idx = idx[idx < c]
    if len(idx) == 0:
        raise ValueError(f"channels select none of the {c} channels")
    return idx


def plot_class_excitation(
    stats: ChannelStats,
    *,
    blocks: str | Sequence[str] | None = None,
    channels: int | Sequence[int] | None = None,
    ncols: int | None = None,
) -> Figure:
    """Mean excitation per class, one panel per block, as in fig. 7 of the SE paper.

    x is the channel index, y the mean excitation over the images of a class; one thin
    line per class and a thick grey line for all images; each title gives the block and
    its :meth:`ChannelStats.specificity`. Pure: the Figure is returned, never shown.

    Args:
        stats: from :func:`channel_stats`.
        blocks: block names or glob patterns (default all), drawn in forward order.
        channels: the first n channels (int) or a sequence of channel indices (default
            all; the paper plots the first 50).
        ncols: panels per row (default up to 3).

    Returns:
        A ``matplotlib.figure.Figure`` with one axes per block.

    Raises:
        ValueError: ``blocks`` or ``channels`` that select nothing, a bad ``ncols``.
    """
    names = _select_blocks(stats, blocks)
    ncols = min(len(names), 3) if ncols is None else ncols
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    spec = stats.specificity()
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _panel(ax, stats, name, _channel_index(channels, stats.channels(name)), spec[name])
        if i == 0 and len(stats.counts) <= 20:
            ax.legend(fontsize="x-small", ncols=2 if len(stats.counts) > 6 else 1)
    return fig


def _panel(ax: Any, stats: ChannelStats, name: str, idx: torch.Tensor, spec: float) -> None:
    x = idx.numpy()
    for k, label in enumerate(stats.class_names):
        if stats.counts[k] > 0:
            ax.plot(x, stats.mean[name][k, idx].numpy(), lw=0.9, label=label)
    ax.plot(x, stats.overall_mean[name][idx].numpy(), color="0.45", lw=3, alpha=0.8, label="all")
    ax.set_title(f"{name}\nspecificity {spec:.3g}", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("channel index")
    ax.set_ylabel("mean excitation")


# -- cost of a forward pass ------------------------------------------------------------------
def forward_cost(model: nn.Module, x: torch.Tensor, reps: int = 5) -> dict[str, float]:
    """Median time (ms) of ``reps`` forwards of ``x`` and the peak memory (MiB) of one.

    Eval mode under ``torch.no_grad()`` (every module's mode is restored). Peak memory is
    the high-water mark of the allocations the torch profiler records during one
    forward (``profile_memory=True``), summed in time order; the input and the weights,
    allocated before, are not included.
    """
    import statistics
    import time

    from torch.profiler import ProfilerActivity, profile

    with inference(model):
        model(x)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return {"ms": 1000 * statistics.median(times), "peak_mib": peak / 2**20}


def spatial_maps(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 64,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Every spatial gate's map Ms (CBAM, Woo et al. 2018, eq. 3) for a set of images.

    Forward passes of ``batch_size`` images under one :func:`attnviz.capture` with
    ``kinds="spatial"`` (eval mode, no gradients; the model's flags are restored).

    Args:
        model: a network with CBAM (or other spatial) attention.
        images: N x C x H x W network inputs.
        batch_size: images per forward pass.
        dtype: store the maps in this dtype (``torch.float16`` halves the memory, for
            pictures); None keeps float32. Score float32 maps: in float16, sigmoid values
            near 1 round to the same number and tie at the maximum.
        device: where the model runs (default: its parameters' device); maps end on the CPU.

    Returns:
        record name (e.g. ``"layer4.0.attention.spatial_gate"``) -> N x h x w maps at their
        native resolution, in forward order.

    Raises:
        ValueError: bad image shape or batch size, or no spatial attention in the model.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be N x C x H x W, got {tuple(images.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if device is None:
        device = model_device(model)
    with torch.no_grad(), capture(model, kinds="spatial", dtype=dtype) as rec:
        for i in range(0, len(images), batch_size):
            model(images[i : i + batch_size].to(device))
    return {name: cast(SpatialRecord, r).map for name, r in rec.items()}  # kinds="spatial"
