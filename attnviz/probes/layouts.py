"""Where an attention kernel's queries and keys sit on the image: layouts per family.

A kernel found at run time (:mod:`attnviz.probes.kernels`) gives a matrix of shape
(lead..., Q, K). Its lead dimensions mix images, windows (or blocks, groups) and heads,
and its rows and columns are tokens: which token is which pixel of the feature grid is
in the module around the kernel, not in its arguments. A layout reads that from the
module, its parents and the forward's input, and returns a :class:`Placement`.

- **Global** (:func:`global_layout`): every token of an image attends to every other
  (ViT, BEiT, EVA, CaiT, CoAtNet's transformer stages, FastViT, Visformer, Hugging Face
  ViT / DeiT / DINOv2 / CLIP / SigLIP / BEiT): lead = (images, heads); tokens are the
  model's named leading tokens (class, distillation, registers), then the patches
  row-major on the grid of the model input (or the module input's own H x W grid).
  Class attention (CaiT, XCiT: one query, the class token, over [class, patches]) is
  global too.
- **Shifted windows** (:func:`swin_layout`): Swin v1 and v2 in timm, torchvision and
  Hugging Face. The map is cut into ws x ws windows after a cyclic shift by (sy, sx)
  on alternate blocks, with zero padding to a multiple of the window: timm rolls and
  then pads, torchvision and Hugging Face pad and then roll (and shift nothing on an
  axis whose padded size is one window). Lead = (images x windows, heads), windows
  row-major. Token t = i ws + j of window (wy, wx) is at padded position
  (wy ws + i, wx ws + j); its place on the feature map undoes the shift, and padded
  positions are keys with no place (the record keeps their weight:
  ``padding_mass``).
- **Spatial-reduction keys** (PVT-v2, Twins' global sub-sampled attention): all H x W
  queries, keys on the ``floor(H / sr) x floor(W / sr)`` grid of a strided convolution
  (or 7 x 7 adaptive pooling for PVT's linear variant).
- **Blocks and grids** (MaxViT in timm): windows of g x g adjacent tokens
  (``partition_block``) or a dilated g x g lattice spanning the map (grid attention:
  token (i, j) of group (a, b) at (i H/g + a, j W/g + b)).

A family with no layout is still recorded exactly, but its record says its tokens are
not placed (``record.geometry.unplaced``, the reason) and its grid methods refuse with it.

A :class:`Placement` is about the kernel (how its lead dimensions split into images,
groups and heads); what stays true of the record, where its tokens lie, is the
:class:`~attnviz.records.Geometry` it gives the record (:meth:`Placement.geometry`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..records import Geometry, SelfAttentionRecord, WindowAttentionRecord
from .tokens import TokenLayout

__all__ = ["LAYOUTS", "Placement", "Scene", "global_layout", "layout_for", "window_positions"]


@dataclass
class Scene:
    """What a layout may read: the running module, its parents, the model and its input.

    Attributes:
        module: the module the kernel ran in; args, kwargs: its forward's arguments.
        parents: (module, args, kwargs) of the modules around it, innermost first.
        images: images in the model's input (its first 4-D argument), or None.
        image_size: (H, W) of that input, or None.
        tokens: the model's token layout (named leading tokens, patch size), or None.
    """

    module: nn.Module
    args: tuple
    kwargs: dict
    parents: list[tuple[nn.Module, tuple, dict]]
    images: int | None
    image_size: tuple[int, int] | None
    tokens: TokenLayout | None

    def parent_with(self, *attributes: str) -> tuple[nn.Module, tuple, dict] | None:
        """The innermost parent that has every one of ``attributes``."""
        for p in self.parents:
            if all(hasattr(p[0], a) for a in attributes):
                return p
        return None


@dataclass
class Placement:
    """How a kernel's matrix (lead..., Q, K) lies on the image.

    Attributes:
        images, groups, heads: the lead dimensions, flattened in this order.
        query_pos, key_pos: groups x Q and groups x K flat indices on the query and key
            grids (row-major), -1 for a token with no place (a named leading token or
            zero padding). None for one global group: tokens are the prefix, then the
            grid row-major.
        query_size, key_size: (H, W) of the grids, or None where the tokens are no grid.
        prefix: named leading tokens of a global group (``("cls",)``), in order.
        source: what the layout was read from, for the record.
    """

    images: int
    groups: int
    heads: int
    query_size: tuple[int, int] | None
    key_size: tuple[int, int] | None
    query_pos: torch.Tensor | None = None
    key_pos: torch.Tensor | None = None
    prefix: tuple[str, ...] = ()
    source: str = ""
    heads_first: bool = False  # lead flattened as (images, heads, groups): NesT

    def geometry(self, queries: int) -> Geometry:
        """The record's geometry for a kernel of ``queries`` queries: grids, named tokens,
        places of windowed tokens (a global group's ``queries`` tokens that are neither
        named nor on a grid are unplaced)."""
        unplaced = None
        if self.query_pos is None and self.query_size is None and queries != len(self.prefix):
            unplaced = (
                f"its {queries} queries are neither its named tokens {list(self.prefix)} nor "
                f"positions on a grid ({self.source})"
            )
        return Geometry(
            query_size=self.query_size,
            key_size=self.key_size,
            prefix=self.prefix,
            query_pos=self.query_pos,
            key_pos=self.key_pos,
            unplaced=unplaced,
            source=self.source,
        )

    def fields(self, a: torch.Tensor, v: torch.Tensor) -> tuple[dict, Geometry, type]:
        """Record fields, geometry and record class for matrix ``a`` and values ``v``."""
        q, k = a.shape[-2:]
        if self.query_pos is None:
            a4 = a.reshape(self.images, self.heads, q, k)
            v4 = v.reshape(self.images, self.heads, k, v.shape[-1])
            return {"matrix": a4, "values": v4}, self.geometry(q), SelfAttentionRecord
        if self.heads_first:
            shape = (self.images, self.heads, self.groups)
            w = a.reshape(*shape, q, k).transpose(1, 2)
            vv = v.reshape(*shape, k, v.shape[-1]).transpose(1, 2)
        else:
            shape = (self.images, self.groups, self.heads)
            w = a.reshape(*shape, q, k)
            vv = v.reshape(*shape, k, v.shape[-1])
        return {"windows": w, "values": vv}, self.geometry(q), WindowAttentionRecord


Layout = Callable[[Scene, tuple[int, ...], int, int], "Placement | None"]

#: layouts by the qualified class name of the module the kernel runs in
LAYOUTS: dict[str, Layout] = {}


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def layout_for(scene: Scene) -> Callable[[tuple[int, ...], int, int], Placement | None]:
    """The layout of ``scene.module`` (its class's entry, else :func:`global_layout`),
    bound to the scene: ``(lead, Q, K) -> Placement | None``."""
    fn = next(
        (LAYOUTS[_qualname(t)] for t in type(scene.module).__mro__ if _qualname(t) in LAYOUTS),
        global_layout,
    )
    return lambda lead, q, k: fn(scene, tuple(lead), q, k)


def _register(*names: str) -> Callable[[Layout], Layout]:
    def add(fn: Layout) -> Layout:
        for n in names:
            LAYOUTS[n] = fn
        return fn

    return add


# -- global ---------------------------------------------------------------------------------
def _module_batch(scene: Scene) -> int | None:
    x = scene.args[0] if scene.args else next(iter(scene.kwargs.values()), None)
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else None


def _split_lead(scene: Scene, lead: tuple[int, ...]) -> tuple[int, int] | None:
    """(images, heads) of a global kernel, or None when its lead holds more than that
    (windows folded into the batch show in the module input's batch: B x windows)."""
    b = scene.images
    if b is None or _module_batch(scene) not in (b, None):
        return None
    if len(lead) == 2 and lead[0] == b:
        return b, lead[1]
    heads = getattr(scene.module, "num_heads", None)
    if len(lead) == 1 and isinstance(heads, int) and lead[0] == b * heads:
        return b, heads  # heads folded into the batch, image-major (SAM's global blocks)
    if len(lead) == 1 and lead[0] == b:
        return b, 1
    return None


def _input_grid(scene: Scene, n: int) -> tuple[int, int] | None:
    """The module input's own grid when it holds exactly ``n`` positions and tiles the
    model's input image with a whole stride (a zero-padded window does not)."""
    grid = _own_grid(scene, n)
    if grid is None or scene.image_size is None:
        return grid
    (h, w), (gh, gw) = scene.image_size, grid
    return grid if h % gh == 0 and w % gw == 0 else None


def _own_grid(scene: Scene, n: int) -> tuple[int, int] | None:
    x = scene.args[0] if scene.args else next(iter(scene.kwargs.values()), None)
    if not isinstance(x, torch.Tensor):
        return None
    if x.dim() == 4:
        nchw, nhwc = tuple(x.shape[2:]), tuple(x.shape[1:3])
        if nchw[0] * nchw[1] == n:
            return int(nchw[0]), int(nchw[1])
        if nhwc[0] * nhwc[1] == n:
            return int(nhwc[0]), int(nhwc[1])
        return None
    if x.dim() == 3 and x.shape[1] == n:
        hw = _feature_size(scene)
        if hw is not None and hw[0] * hw[1] == n:
            return hw
        side = math.isqrt(n)
        return (side, side) if side * side == n else None
    return None


def _feature_size(scene: Scene) -> tuple[int, int] | None:
    """A (H, W) pair passed to the module beside its tokens (PVT, Twins, Hugging Face
    Swin: ``feat_size`` / ``size`` / ``input_dimensions``)."""
    for v in (*scene.args[1:], *scene.kwargs.values()):
        if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(s, int) for s in v):
            return int(v[0]), int(v[1])
    return None


def _token_grid(scene: Scene, n: int) -> tuple[tuple[str, ...], tuple[int, int]] | None:
    """(prefix, grid) when ``n`` tokens are the model's named leading tokens then its
    patch grid (or the patch grid alone: CaiT's patch layers see no class token)."""
    layout = scene.tokens
    if layout is None or scene.image_size is None:
        return None
    h, w = scene.image_size[0] // layout.patch[0], scene.image_size[1] // layout.patch[1]
    if n == h * w + len(layout.prefix):
        return layout.prefix, (h, w)
    if n == h * w:
        return (), (h, w)
    return None


def global_layout(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """Every token attends to every token: the model's tokens, or the input's grid."""
    split = _split_lead(scene, lead)
    if split is None:
        return None
    b, heads = split
    src = scene.tokens.source if scene.tokens is not None else ""
    named = _token_grid(scene, k)
    if named is not None:
        prefix, grid = named
        if q == k:
            return Placement(b, 1, heads, grid, grid, prefix=prefix, source=src)
        if q == 1 and prefix[:1] == ("cls",):  # class attention: the class token's row
            what = src + ", class attention"
            return Placement(b, 1, heads, None, grid, prefix=prefix, source=what)
        return None
    own = _input_grid(scene, q) if q == k else None
    if own is not None:
        return Placement(b, 1, heads, own, own, source="the module input's grid")
    return None


# -- shifted windows (Swin) -------------------------------------------------------------------
def window_positions(
    size: Sequence[int], window: Sequence[int], shift: Sequence[int], *, pad_first: bool
) -> torch.Tensor:
    """Where each token of each window lies on the feature map: windows x ws^2 flat indices
    (row-major on ``size``), -1 for zero padding.

    Args:
        size: (H, W) of the feature map.
        window: (wh, ww) window size.
        shift: (sy, sx) cyclic shift (the map is rolled by (-sy, -sx) before partitioning).
        pad_first: pad to a multiple of the window, then roll (torchvision, Hugging Face);
            else roll, then pad (timm).
    """
    (h, w), (wh, ww), (sy, sx) = size, window, shift
    hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    y = torch.arange(hp)[:, None].expand(hp, wp)
    x = torch.arange(wp)[None, :].expand(hp, wp)
    if pad_first:
        y, x = (y + sy) % hp, (x + sx) % wp
        off = (y >= h) | (x >= w)
    else:
        off = (y >= h) | (x >= w)
        y, x = (y + sy) % h, (x + sx) % w
    flat = torch.where(off, torch.full_like(y, -1), y * w + x)
    win = flat.reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3)
    return win.reshape(-1, wh * ww)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def _windows(
    scene: Scene,
    lead: tuple[int, ...],
    q: int,
    size: tuple[int, int],
    window: tuple[int, int],
    shift: tuple[int, int],
    pad_first: bool,
    source: str,
    *,
    heads_first: bool = False,
) -> Placement | None:
    """Windows of a map, row-major, each row-major inside: lead (images x windows, heads),
    (images, windows, heads) or, ``heads_first``, (images, heads, windows)."""
    b = scene.images
    if b is None or q != window[0] * window[1]:
        return None
    pos = window_positions(size, window, shift, pad_first=pad_first)
    g = pos.shape[0]
    if len(lead) == 2 and lead[0] == b * g:
        heads = lead[1]
    elif len(lead) == 3 and lead[0] == b and lead[2 if heads_first else 1] == g:
        heads = lead[1 if heads_first else 2]
    else:
        return None
    return Placement(b, g, heads, size, size, pos, pos, source=source, heads_first=heads_first)


@_register(
    "timm.models.swin_transformer.WindowAttention",
    "timm.models.swin_transformer_v2.WindowAttention",
    "timm.models.swin_transformer_v2_cr.WindowMultiHeadAttention",
)
def _timm_swin(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    found = scene.parent_with("window_size", "shift_size")
    if found is None or not found[1] or not isinstance(found[1][0], torch.Tensor):
        return None
    block, (x, *_), _ = found
    if x.dim() != 4:  # SwinV2-cr blocks take B x H x W x C too; anything else: unknown
        return None
    size = (int(x.shape[1]), int(x.shape[2]))
    # timm decides the shift when it builds the block (none where the window spans the
    # map) and rolls by block.shift_size whatever the input: always_partition, or
    # another input size with strict_img_size=False, keep a shift on a small map
    window, shift = _pair(block.window_size), _pair(block.shift_size)
    what = f"{type(block).__name__}: windows {window}, shift {shift}, roll then pad"
    return _windows(scene, lead, q, size, window, shift, False, what)


@_register(
    "torchvision.models.swin_transformer.ShiftedWindowAttention",
    "torchvision.models.swin_transformer.ShiftedWindowAttentionV2",
)
def _torchvision_swin(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    m, x = scene.module, scene.args[0] if scene.args else None
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    size = (int(x.shape[1]), int(x.shape[2]))
    window, shift = _pair(m.window_size), list(_pair(m.shift_size))
    for i in range(2):  # torchvision shifts nothing where the window spans the padded map
        if window[i] >= math.ceil(size[i] / window[i]) * window[i]:
            shift[i] = 0
    what = f"{type(m).__name__}: windows {window}, shift {tuple(shift)}, pad then roll"
    return _windows(scene, lead, q, size, window, (shift[0], shift[1]), True, what)


@_register(
    *(
        f"transformers.models.{m}.{cls}"
        for m, name in (
            ("swin.modeling_swin", "Swin"),
            ("swinv2.modeling_swinv2", "Swinv2"),
            ("donut.modeling_donut_swin", "DonutSwin"),
        )
        for cls in (f"{name}Attention", f"{name}SelfAttention")  # 5.x; 4.x computes in the
    )  # self-attention submodule
)
def _hf_swin(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    found = scene.parent_with("window_size", "shift_size", "set_shift_and_window_size")
    if found is None:
        return None
    layer, args, kwargs = found
    size = _feature_size(Scene(layer, args, kwargs, [], None, None, None))
    if size is None:
        return None
    window, shift = _pair(layer.window_size), _pair(layer.shift_size)
    what = f"{type(layer).__name__}: windows {window}, shift {shift}, pad then roll"
    return _windows(scene, lead, q, size, window, shift, True, what)


# -- spatial-reduction keys (PVT-v2, Twins) ---------------------------------------------------
@_register("timm.models.pvt_v2.Attention", "timm.models.twins.GlobalSubSampleAttn")
def _spatial_reduction(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    split = _split_lead(scene, lead)
    size = _feature_size(scene)
    if split is None or size is None or size[0] * size[1] != q:
        return None
    m = scene.module
    keys: tuple[int, int] = size
    sr, pool = getattr(m, "sr", None), getattr(m, "pool", None)
    if isinstance(pool, nn.AdaptiveAvgPool2d):  # PVT's linear variant: 7 x 7 bins
        keys = _pair(pool.output_size)
    elif isinstance(sr, nn.Conv2d):  # kernel = stride = sr, no padding
        (kh, kw), (sh, sw) = _pair(sr.kernel_size), _pair(sr.stride)
        keys = ((size[0] - kh) // sh + 1, (size[1] - kw) // sw + 1)
    if keys[0] * keys[1] != k:
        return None
    what = f"{type(m).__name__}: queries {size}, keys {keys} (spatial reduction)"
    return Placement(split[0], 1, split[1], size, keys, source=what)


# -- MaxViT (timm): block and grid partitions ------------------------------------------------
@_register("timm.models.maxxvit.AttentionCl")
def _maxvit(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    found = scene.parent_with("partition_block", "partition_size")
    b = scene.images
    if found is None or b is None or len(lead) != 2 or not found[1]:
        return None
    block, (x, *_), _ = found
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    h, w = int(x.shape[1]), int(x.shape[2])  # NHWC
    g = _pair(cast(Any, block).partition_size)
    if q != g[0] * g[1] or h % g[0] or w % g[1]:
        return None
    idx = torch.arange(h * w).reshape(h, w)
    if block.partition_block:
        pos = idx.reshape(h // g[0], g[0], w // g[1], g[1]).permute(0, 2, 1, 3)
        what = f"window partition {g}"
    else:
        pos = idx.reshape(g[0], h // g[0], g[1], w // g[1]).permute(1, 3, 0, 2)
        what = f"grid partition {g} (dilated)"
    pos = pos.reshape(-1, q)
    if lead[0] != b * pos.shape[0]:
        return None
    return Placement(b, pos.shape[0], lead[1], (h, w), (h, w), pos, pos, source=what)


@_register("torchvision.models.maxvit.RelativePositionalMultiHeadAttention")
def _torchvision_maxvit(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """torchvision's MaxViT: its ``PartitionAttentionLayer`` cuts the NCHW map into P x P
    windows (window: group = window, token = i P + j) or, for grid attention, into
    P = H / partition_size cells and swaps the axes (group = offset i P + j inside a cell,
    token = the cell); token (i, j) of cell (gy, gx) lies at (gy P + i, gx P + j)."""
    found = scene.parent_with("partition_type", "p", "grid_size")
    b = scene.images
    if found is None or b is None or len(lead) != 3 or lead[0] != b or not found[1]:
        return None
    layer, (x, *_), _ = found
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    h, w, p = int(x.shape[2]), int(x.shape[3]), int(cast(Any, layer).p)
    if h % p or w % p:
        return None
    cells = torch.arange(h * w).reshape(h // p, p, w // p, p)  # gy, i, gx, j
    if layer.partition_type == "window":
        pos = cells.permute(0, 2, 1, 3).reshape(-1, p * p)
        what = f"window partition {p} x {p}"
    else:
        pos = cells.permute(1, 3, 0, 2).reshape(p * p, -1)
        what = f"grid partition: cells of {p} x {p}, a group holds one position of each cell"
    if pos.shape != (lead[1], q):
        return None
    return Placement(b, lead[1], lead[2], (h, w), (h, w), pos, pos, source=what)


@_register("timm.models.hiera.MaskUnitAttention")
def _unrolled(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """Hiera keeps its tokens in its own "unrolled" order (mask units, then pooling
    strides), not row-major: no layout reads that order yet, so its records stay
    unplaced rather than drawn in the wrong places."""
    return None


@_register("timm.models.vision_transformer_sam.Attention")
def _sam(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """SAM's image encoder: blocks with ``window_size > 0`` pad the B x H x W x C map to
    a multiple of the window and attend within windows (heads folded into the batch,
    image-major, then window, then head); the others attend globally."""
    found = scene.parent_with("window_size")
    b = scene.images
    if found is None or b is None or not found[1] or len(lead) != 1:
        return None
    block, (x, *_), _ = found
    ws = int(cast(Any, block).window_size)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    if ws <= 0:
        return global_layout(scene, lead, q, k)
    size = (int(x.shape[1]), int(x.shape[2]))
    pos = window_positions(size, (ws, ws), (0, 0), pad_first=True)
    heads = getattr(scene.module, "num_heads", None)
    if not isinstance(heads, int) or lead[0] != b * pos.shape[0] * heads or q != ws * ws:
        return None
    what = f"{type(block).__name__}: windows ({ws}, {ws}), zero padding"
    return Placement(b, pos.shape[0], heads, size, size, pos, pos, source=what)


def _map_size(x: Any, channels_last: bool) -> tuple[int, int] | None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    dims = (1, 2) if channels_last else (2, 3)
    return int(x.shape[dims[0]]), int(x.shape[dims[1]])


@_register("timm.models.tiny_vit.Attention", "timm.models.davit.WindowAttention")
def _padded_windows(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """TinyViT and DaViT: the block zero-pads its map (bottom, right) to a multiple of the
    window and cuts it into windows, row-major, with no shift (TinyViT's blocks take
    B x H x W x C, DaViT's spatial blocks B x C x H x W). A map of exactly one window is
    attended to globally."""
    found = scene.parent_with("window_size")
    if found is None or not found[1]:
        return None
    block, (x, *_), _ = found
    ws = _pair(cast(Any, block).window_size)
    size = _map_size(x, channels_last=type(block).__name__ == "TinyVitBlock")
    if size is None:
        return None
    what = f"{type(block).__name__}: windows {ws}, zero padding"
    return _windows(scene, lead, q, size, ws, (0, 0), True, what)


@_register("timm.models.twins.LocallyGroupedAttn")
def _twins_local(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """Twins' locally-grouped attention: the H x W tokens (size given beside them) padded
    to ws x ws windows, the window axis before the heads: lead (images, windows, heads)."""
    size, ws = _feature_size(scene), int(cast(Any, scene.module).ws)
    if size is None:
        return None
    return _windows(scene, lead, q, size, (ws, ws), (0, 0), True, f"windows ({ws}, {ws})")


@_register("timm.models.nest.Attention")
def _nest(scene: Scene, lead: tuple[int, ...], q: int, k: int) -> Placement | None:
    """NesT: each level's map is cut into T square blocks of block_size x block_size
    (``blockify``, row-major), attended to separately; heads come before the block axis:
    lead (images, heads, blocks)."""
    found = scene.parent_with("block_size")
    x = scene.args[0] if scene.args else None
    if found is None or not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    bs, t = int(cast(Any, found[0]).block_size), int(x.shape[1])
    side = math.isqrt(t)
    if side * side != t:
        return None
    size = (side * bs, side * bs)
    return _windows(
        scene, lead, q, size, (bs, bs), (0, 0), True, f"blocks ({bs}, {bs})", heads_first=True
    )
