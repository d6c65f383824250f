"""The transformer zoo: every recorded matrix equals an independent recomputation.

For each family the test hooks the attention module's input (a forward pre-hook of its
own), recomputes q and k from the module's own weights the way its source does, and
builds ``softmax(scale q k^T + bias/mask)`` per head, with the family's relative-position
bias or shift mask rebuilt from its table with an index written here (not the module's
buffer). Where tokens sit on the image is checked against an index image pushed through
the block's own roll / pad / partition code. Models are tiny (random weights, eval mode)
with every normalisation randomised (BatchNorm running statistics, LayerNorm weights and
biases), so that nothing cancels by accident; each capture runs with ``verify="raise"``.

Where each family keeps q, k, its biases and its geometry is read from the installed
timm, torchvision and transformers sources; each test's helper says which function it
mirrors.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnviz
from attnviz.records import SelfAttentionRecord, WindowAttentionRecord

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

#: the recorded matrix against the recomputation (both float32)
TOL = {"rtol": 1e-5, "atol": 1e-6}
#: two recordings of the same computation by two kernels (fused vs explicit, sdpa vs eager)
SAME = {"rtol": 1e-5, "atol": 1e-6}
KERNEL = {"sdpa": "scaled_dot_product_attention", "eager": "softmax, then matrix @ values"}


# -- helpers ----------------------------------------------------------------------------------
def randomise(model: nn.Module, seed: int = 0, gain: float = 1.5) -> nn.Module:
    """Random weights that make attention peaked (logits of a few units), random norms.

    Linear / conv weights ~ N(0, gain^2 / fan_in); every other parameter (biases, tables,
    tokens, scales) ~ N(0, 0.5^2); LayerNorm / GroupNorm / BatchNorm weights ~ N(1, 0.5^2),
    biases ~ N(0, 0.5^2); BatchNorm running means ~ N(0, 0.5^2), variances ~ U(0.5, 2).
    """
    g = torch.Generator().manual_seed(seed)

    def draw(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std + mean

    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if name == "weight" and p.dim() >= 2:
                    p.copy_(draw(p.shape, gain / math.sqrt(p[0].numel())))
                else:
                    p.copy_(draw(p.shape, 0.5))
            norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
            if isinstance(m, norms) and getattr(m, "weight", None) is not None:
                m.weight.copy_(draw(m.weight.shape, 0.5, 1.0))
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(draw(m.running_mean.shape, 0.5))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    model.train()
    model.eval()  # LeViT clears its cached attention biases on .train()
    return model


@dataclass
class Run:
    """One forward pass under ``attnviz.capture`` with this file's own input hooks."""

    model: nn.Module
    rec: attnviz.Recording
    inputs: dict[str, tuple[tuple, dict]] = field(default_factory=dict)
    output: Any = None
    x: torch.Tensor | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        assert self.x is not None
        return int(self.x.shape[-2]), int(self.x.shape[-1])


def _clone(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_clone(t) for t in v)
    return v


def run(
    model: nn.Module, x: torch.Tensor, hooked: Callable[[nn.Module], bool], **kwargs: Any
) -> Run:
    """``model(x)`` in eval mode under a capture that raises on any failed check or
    unrecorded kernel; the inputs of the modules ``hooked`` selects are kept by name."""
    model.eval()
    inputs: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name, m in model.named_modules():
        if hooked(m):

            def keep(_m: nn.Module, args: tuple, kw: dict, name: str = name) -> None:
                assert name not in inputs, f"{name} ran twice in one forward"
                inputs[name] = (_clone(args), _clone(kw))

            handles.append(m.register_forward_pre_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", attnviz.CaptureWarning)
            with attnviz.capture(model, verify="raise") as rec:
                out = model(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    assert not rec.unrecorded, rec.unrecorded
    assert inputs, "no module was hooked"
    for r in rec.values():
        # every record found by its kernel states it (torch's MultiheadAttention is read by
        # its registered probe: test_siglip_pooling_head_states_its_kernel)
        if isinstance(r, SelfAttentionRecord) and r.module_type != "MultiheadAttention":
            assert {"kernel", "kernel_shape"} <= set(r.meta), r.name
            assert math.prod(r.meta["kernel_shape"]) == r.data.numel(), r.name
    return Run(model, rec, inputs, out, x)


def of_type(*names: str) -> Callable[[nn.Module], bool]:
    """Select modules by qualified class name."""
    return lambda m: f"{type(m).__module__}.{type(m).__qualname__}" in names


def close(actual: torch.Tensor, expected: torch.Tensor, tol: dict = TOL, msg: str = "") -> None:
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{msg}\n{m}")


def heads_of(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., N, heads * d) -> (..., heads, N, d)."""
    return t.reshape(*t.shape[:-1], heads, -1).transpose(-2, -3)


def rel_index(wh: int, ww: int) -> torch.Tensor:
    """Swin / BEiT relative-position index, query - key: ((qy - ky + wh - 1)(2 ww - 1)
    + (qx - kx + ww - 1)), (wh ww) x (wh ww)."""
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + wh - 1
    dx = xs[:, None] - xs[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


def table_bias(table: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """heads x N x N bias from a ((2wh-1)(2ww-1), heads) table."""
    return table[rel_index(wh, ww)].permute(2, 0, 1)


def index_image(h: int, w: int, channels: int = 1) -> torch.Tensor:
    """1 x H x W x C float image holding 1 + the flat index of each cell (0 = padding)."""
    idx = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w, 1)
    return idx.expand(1, h, w, channels).contiguous()


def as_positions(windows: torch.Tensor) -> torch.Tensor:
    """Partitioned index image (G x ... x C) -> G x tokens flat indices, -1 for padding."""
    w = windows[..., 0].reshape(windows.shape[0], -1)
    return w.round().long() - 1


class _Stop(Exception):
    pass


def first_input(module: nn.Module, fn: Callable[[], Any]) -> torch.Tensor:
    """Run ``fn`` until ``module`` is called; return the tensor it was given."""
    got: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        got.append(args[0] if args else next(iter(kwargs.values())))
        raise _Stop

    h = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), contextlib.suppress(_Stop):
            fn()
    finally:
        h.remove()
    assert got, f"{type(module).__name__} was not called"
    return got[0]


def dense(
    windows: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor, nq: int, nk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (B x G x heads x Q x K) laid on the map: (B x heads x nq x nk, and the
    weight on padded keys per query cell, B x heads x nq)."""
    b, g, h = windows.shape[:3]
    out = windows.new_zeros(b, h, nq, nk)
    lost = windows.new_zeros(b, h, nq)
    for i in range(g):
        qv, kv = qpos[i] >= 0, kpos[i] >= 0
        rows, cols = qpos[i][qv], kpos[i][kv]
        w = windows[:, i][:, :, qv]
        out[:, :, rows[:, None], cols[None, :]] = w[..., kv]
        lost[:, :, rows] = w[..., ~kv].sum(-1)
    return out, lost


def shift_mask(hp: int, wp: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """The Swin shift mask on a padded hp x wp grid (windows x N x N): 0 within a region,
    -100 across. Regions per axis: [0, n - ws), [n - ws, n - s), [n - s, n); one region
    on an axis that is not shifted."""

    def label(n: int, ws: int, s: int) -> torch.Tensor:
        r = torch.arange(n)
        return torch.zeros(n, dtype=torch.long) if s == 0 else (r >= n - ws).long() + (r >= n - s)

    lab = label(hp, window[0], shift[0])[:, None] * 3 + label(wp, window[1], shift[1])[None, :]
    lab = lab.reshape(hp // window[0], window[0], wp // window[1], window[1]).permute(0, 2, 1, 3)
    lab = lab.reshape(-1, window[0] * window[1])
    return torch.where(lab[:, :, None] == lab[:, None, :], 0.0, -100.0)


def window_names(r: Run) -> list[str]:
    names = [n for n in r.inputs if n in r.rec]
    assert names, f"no hooked module was recorded: {list(r.rec)} vs {list(r.inputs)}"
    return names


# -- Swin v1 (timm) ----------------------------------------------------------------------------
SWIN_KW = {"depths": (2, 2), "num_heads": (2, 4), "embed_dim": 16, "window_size": 4}
SWIN_SIZE = (40, 56)  # patch 4: 10 x 14 then 5 x 7, both padded to multiples of 4


def timm_swin(
    name: str = "swin_tiny_patch4_window7_224", size: tuple[int, int] = SWIN_SIZE, **kw: Any
) -> nn.Module:
    m = timm.create_model(name, pretrained=False, img_size=size, num_classes=3, **{**SWIN_KW, **kw})
    return randomise(m)


def swin_v1_windows(
    attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, images: int
) -> torch.Tensor:
    """timm swin_transformer.WindowAttention (explicit path): B x nW x heads x N x N."""
    bw, n, c = x.shape
    h = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
    q, k = heads_of(qkv[..., :c], h), heads_of(qkv[..., c : 2 * c], h)
    logits = (q * (c // h) ** -0.5) @ k.transpose(-2, -1)
    logits = logits + table_bias(attn.relative_position_bias_table, *attn.window_size)
    logits = logits.reshape(images, bw // images, h, n, n)
    if mask is not None:
        logits = logits + mask[None, :, None]
    return logits.softmax(-1)


def timm_swin_positions(block: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """Roll by -shift, zero-pad, timm's window_partition: windows x ws^2, -1 = padding."""
    from timm.models.swin_transformer import window_partition

    (h, w), window, (sy, sx) = size, tuple(block.window_size), block.shift_size
    img = torch.roll(index_image(h, w), shifts=(-sy, -sx), dims=(1, 2))
    img = F.pad(img, (0, 0, 0, (-w) % window[1], 0, (-h) % window[0]))
    return as_positions(window_partition(img, window))


def padded(size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """The map padded to a multiple of the window."""
    return math.ceil(size[0] / window[0]) * window[0], math.ceil(size[1] / window[1]) * window[1]


def block_positions(block: nn.Module, method: str, size: tuple[int, int]) -> torch.Tensor:
    """The index image through the block's own ``method`` up to its attention's input."""
    img = index_image(*size)
    return as_positions(first_input(block.attn, lambda: getattr(block, method)(img)))


@pytest.fixture(scope="module")
def swin_v1() -> Run:
    torch.manual_seed(1)
    model = timm_swin()
    x = torch.randn(2, 3, *SWIN_SIZE)
    return run(model, x, of_type("timm.models.swin_transformer.WindowAttention"))


def _blocks(model: nn.Module, cls: str) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == cls}


def _swin_v1_windows(run: Run):
    """(name, record, its SwinTransformerBlock) for every windowed record of ``run``."""
    blocks = _blocks(run.model, "SwinTransformerBlock")
    for name in window_names(run):
        yield name, run.rec[name], blocks[name.rsplit(".", 1)[0]]


def test_timm_swin_v1_matrix_per_window(swin_v1: Run) -> None:
    """Each window's matrix: scaled q k^T + relative-position bias (+ the -100 shift mask)."""
    shifted = 0
    for name, rec, block in _swin_v1_windows(swin_v1):
        (x,), kw = swin_v1.inputs[name]
        mask = None
        if any(block.shift_size):
            shifted += 1
            window = tuple(block.window_size)
            mask = shift_mask(*padded(rec.geometry.query_size, window), window, block.shift_size)
            assert torch.equal(kw["mask"], mask), name
        else:
            assert kw.get("mask") is None, name
        assert isinstance(rec, WindowAttentionRecord)
        expected = swin_v1_windows(block.attn, x, mask, images=2)
        close(rec.windows, expected, msg=name)
        b, g, *rest = expected.shape
        assert rec.meta["kernel_shape"] == (b * g, *rest)
    assert shifted == 2


def test_timm_swin_v1_placement_against_index_image(swin_v1: Run) -> None:
    """The most important check: query_pos / key_pos against the block's own roll, pad
    and window_partition of an index image, on a map that needs padding."""
    padded = 0
    for name, rec, block in _swin_v1_windows(swin_v1):
        size = rec.geometry.query_size
        assert size == block.input_resolution, name
        expected = timm_swin_positions(block, size)
        assert torch.equal(expected, block_positions(block, "_attn", size)), name
        assert torch.equal(rec.geometry.query_pos, expected), name
        assert torch.equal(rec.geometry.key_pos, expected), name
        padded += int((expected < 0).any())
    assert padded == 4  # every block pads (10 x 14 and 5 x 7 with 4 x 4 windows)


def test_timm_swin_v1_dense_matrix_and_padding(swin_v1: Run) -> None:
    heavy = 0
    for name, rec, block in _swin_v1_windows(swin_v1):
        (x,), kw = swin_v1.inputs[name]
        windows = swin_v1_windows(block.attn, x, kw.get("mask"), images=2)
        size = rec.geometry.query_size
        pos = timm_swin_positions(block, size)
        want, lost = dense(windows, pos, pos, size[0] * size[1], size[0] * size[1])
        close(rec.matrix, want, msg=name)
        close(rec.padding_mass(), lost, msg=name)
        close(rec.matrix.sum(-1) + lost, torch.ones_like(lost), msg=name)
        heavy += int(lost.max() > 0.1)
    # padded keys are unmasked and hold weight, except where the shift mask puts the
    # padding in a region of its own (layers.0.blocks.1: rows 10-11 of 12)
    assert heavy == 3


def test_timm_swin_v1_fused_kernel_records_the_same(swin_v1: Run) -> None:
    """timm's experimental fused path (SDPA with bias + shift mask as attn_mask)."""
    model = swin_v1.model
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    try:
        fused = run(model, swin_v1.x, of_type("timm.models.swin_transformer.WindowAttention"))
    finally:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    for name in window_names(swin_v1):
        assert fused.rec[name].meta["kernel"] == "scaled_dot_product_attention"
        close(fused.rec[name].windows, swin_v1.rec[name].windows, SAME, msg=name)
        assert torch.equal(fused.rec[name].geometry.query_pos, swin_v1.rec[name].geometry.query_pos)


@pytest.mark.parametrize(
    ("kw", "size"),
    [
        pytest.param(
            {"always_partition": True},
            (24, 24),
            id="always_partition",
        ),
        pytest.param(
            {"strict_img_size": False},
            (24, 24),
            id="dynamic_img_size",
        ),
    ],
)
def test_timm_swin_shift_kept_where_window_covers_the_map(kw: dict, size: tuple) -> None:
    """timm keeps the shift when the map is no larger than the window if the block
    always partitions (``always_partition=True``) or the model runs at another size
    (``strict_img_size=False``): it rolls, then pads. Stage 2 here is 3 x 3 with 4 x 4
    windows shifted by 2."""
    model = timm_swin(size=SWIN_SIZE if "strict_img_size" in kw else size, **kw)
    hooked = of_type("timm.models.swin_transformer.WindowAttention")
    r = run(model, torch.randn(2, 3, *size), hooked)
    blocks = _blocks(model, "SwinTransformerBlock")
    name = "layers.1.blocks.1.attn"
    block = blocks["layers.1.blocks.1"]
    rec = r.rec[name]
    assert rec.geometry.query_size == (3, 3) and any(block.shift_size)
    expected = block_positions(block, "_attn", (3, 3))
    (x,), kwargs = r.inputs[name]
    close(rec.windows, swin_v1_windows(block.attn, x, kwargs.get("mask"), images=2), msg=name)
    assert torch.equal(rec.geometry.query_pos, expected), (
        f"{rec.geometry.source}: query_pos {rec.geometry.query_pos.tolist()} but the block "
        f"placed {expected.tolist()}"
    )


def test_shift_mask_helper_matches_timm() -> None:
    """The test's own mask (used for torchvision and Hugging Face) against timm's buffer."""
    model = timm_swin()
    block = _blocks(model, "SwinTransformerBlock")["layers.0.blocks.1"]
    hp, wp = padded(block.input_resolution, block.window_size)
    assert torch.equal(block.attn_mask, shift_mask(hp, wp, block.window_size, block.shift_size))


# -- torchvision Swin ---------------------------------------------------------------------------
TV_SIZE = (100, 92)  # patch 4: 25 x 23 (padded to 28 x 28), then 13 x 12, 7 x 6, 4 x 3


def _partition(img: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    b, hp, wp, c = img.shape
    img = img.reshape(b, hp // window[0], window[0], wp // window[1], window[1], c)
    return img.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def torchvision_geometry(m: nn.Module, size: tuple[int, int]):
    window = tuple(m.window_size)
    hp, wp = padded(size, window)
    shift = tuple(0 if window[i] >= (hp, wp)[i] else m.shift_size[i] for i in range(2))
    return window, shift, hp, wp


def torchvision_windows(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision ShiftedWindowAttention(V2) from its NHWC input: pad, then roll."""
    b, h, w, c = x.shape
    window, shift, hp, wp = torchvision_geometry(m, (h, w))
    xp = torch.roll(F.pad(x, (0, 0, 0, wp - w, 0, hp - h)), (-shift[0], -shift[1]), (1, 2))
    xw = _partition(xp, window)
    heads = m.num_heads
    v2 = hasattr(m, "logit_scale")
    bias = m.qkv.bias.clone()
    if v2:
        bias[c : 2 * c] = 0  # the k bias is zeroed on a clone
    qkv = F.linear(xw, m.qkv.weight, bias)
    q, k = heads_of(qkv[..., :c], heads), heads_of(qkv[..., c : 2 * c], heads)
    if v2:  # cosine attention, 16 sigmoid(cpb_mlp(log-spaced table))
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logits = logits * m.logit_scale.clamp(max=math.log(100.0)).exp()
        l1, l2 = m.cpb_mlp[0], m.cpb_mlp[2]
        t = F.linear(F.relu(F.linear(log_coords_table(*window), l1.weight, l1.bias)), l2.weight)
        bias = t.reshape(-1, heads)[rel_index(*window)].permute(2, 0, 1)
        logits = logits + 16 * torch.sigmoid(bias)
    else:
        logits = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
        logits = logits + table_bias(m.relative_position_bias_table, *window)
    n = window[0] * window[1]
    logits = logits.reshape(b, -1, heads, n, n)
    if any(shift):
        logits = logits + shift_mask(hp, wp, window, shift)[None, :, None]
    return logits.softmax(-1)


def torchvision_positions(m: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    window, shift, hp, wp = torchvision_geometry(m, size)
    img = F.pad(index_image(*size), (0, 0, 0, wp - size[1], 0, hp - size[0]))
    return as_positions(_partition(torch.roll(img, (-shift[0], -shift[1]), (1, 2)), window))


class _FirstLinear(torch.overrides.TorchFunctionMode):
    """Stops a forward at its first F.linear with ``weight`` and keeps that call's input."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.x: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear and self.x is None and args[1] is self.weight:
            self.x = args[0]
            raise _Stop
        return func(*args, **(kwargs or {}))


def own_code_positions(m: nn.Module, size: tuple[int, int], channels: int) -> torch.Tensor:
    """The index image through ``m``'s own forward, read where it reaches the qkv linear."""
    mode = _FirstLinear(m.qkv.weight)
    with torch.no_grad(), contextlib.suppress(_Stop), mode:
        m(index_image(*size, channels))
    assert mode.x is not None
    return as_positions(mode.x)


def tv_swin(v2: bool) -> nn.Module:
    """torchvision's SwinTransformer as swin_t / swin_v2_t build it (patch 4, window 7 or 8,
    v2 blocks and merging), at a quarter of their width so that it runs in a second."""
    from torchvision.models import swin_transformer as tvs

    extra = {"block": tvs.SwinTransformerBlockV2, "downsample_layer": tvs.PatchMergingV2}
    extra = extra if v2 else {}
    m = tvs.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=24,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=[8, 8] if v2 else [7, 7],
        **extra,
    )
    return randomise(m)


@pytest.mark.parametrize(
    "size",
    # 25 x 23, 13 x 12, 7 x 6, 4 x 3: the last two stages fit one (padded) window, unshifted;
    # 7 x 20, 4 x 10, ...: shifted along the width only (one window high)
    [TV_SIZE, (28, 80)],
    ids=["padded", "one_axis_shift"],
)
@pytest.mark.parametrize("v2", [False, True], ids=["swin_t", "swin_v2_t"])
def test_torchvision_swin_matrix_and_placement(v2: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(2)
    attn = "ShiftedWindowAttentionV2" if v2 else "ShiftedWindowAttention"
    r = run(
        tv_swin(v2),
        torch.randn(2, 3, *size),
        of_type(f"torchvision.models.swin_transformer.{attn}"),
    )
    shifted = padded = 0
    for name in window_names(r):
        m = r.model.get_submodule(name)
        rec = r.rec[name]
        (x,), _ = r.inputs[name]
        grid = (int(x.shape[1]), int(x.shape[2]))
        assert rec.geometry.query_size == grid, name
        windows = torchvision_windows(m, x)
        close(rec.windows, windows, msg=name)
        pos = torchvision_positions(m, grid)
        assert torch.equal(pos, own_code_positions(m, grid, x.shape[-1])), name
        assert torch.equal(rec.geometry.query_pos, pos), name
        assert torch.equal(rec.geometry.key_pos, pos), name
        want, lost = dense(windows, pos, pos, grid[0] * grid[1], grid[0] * grid[1])
        close(rec.matrix, want, msg=name)
        close(rec.padding_mass(), lost, msg=name)
        shifted += int(any(torchvision_geometry(m, grid)[1]))
        padded += int((pos < 0).any())
    assert (shifted, padded) == (2, 8)


# -- Hugging Face Swin --------------------------------------------------------------------------
HF_SWIN_SIZE = (36, 44)  # patch 2: 18 x 22 (padded to 20 x 24), then 9 x 11 (12 x 12)


def hf_swin(impl: str) -> nn.Module:
    cfg = transformers.SwinConfig(
        image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
    )
    return randomise(transformers.SwinModel._from_config(cfg, attn_implementation=impl))


HF_SWIN_ATTN = of_type("transformers.models.swin.modeling_swin.SwinAttention")


@pytest.fixture(scope="module")
def hf_swin_runs() -> dict[str, Run]:
    torch.manual_seed(3)
    x = torch.randn(2, 3, *HF_SWIN_SIZE)
    out = {}
    for impl in ("sdpa", "eager"):
        model = hf_swin(impl)
        out[impl] = run(model, x, HF_SWIN_ATTN)
    return out


def hf_swin_windows(layer: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    attn = layer.attention
    heads, ws, shift = attn.num_attention_heads, layer.window_size, layer.shift_size
    q, k = heads_of(attn.q_proj(x), heads), heads_of(attn.k_proj(x), heads)
    logits = q @ k.transpose(-2, -1) * attn.head_dim**-0.5
    logits = logits + table_bias(attn.relative_position_bias.relative_position_bias_table, ws, ws)
    n = ws * ws
    logits = logits.reshape(2, -1, heads, n, n)
    if shift:
        hp, wp = padded(size, (ws, ws))
        logits = logits + shift_mask(hp, wp, (ws, ws), (shift, shift))[None, :, None]
    return logits.softmax(-1)


def hf_swin_positions(layer: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """The index image through the layer's own maybe_pad, cyclic_shift, window_partition."""
    from transformers.models.swin.modeling_swin import window_partition

    img, _ = layer.maybe_pad(index_image(*size), *size)
    return as_positions(window_partition(layer.cyclic_shift(img), layer.window_size))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hugging_face_swin_matrix_and_placement(hf_swin_runs: dict[str, Run], impl: str) -> None:
    r = hf_swin_runs[impl]
    shifted = 0
    for name in window_names(r):
        layer = r.model.get_submodule(name.rsplit(".", 1)[0])
        rec = r.rec[name]
        size = rec.geometry.query_size
        (x, mask), _ = r.inputs[name]
        assert rec.meta["kernel"] == KERNEL[impl]
        windows = hf_swin_windows(layer, x, size)
        close(rec.windows, windows, msg=name)
        pos = hf_swin_positions(layer, size)
        assert torch.equal(rec.geometry.query_pos, pos), name
        assert torch.equal(rec.geometry.key_pos, pos), name
        assert (pos < 0).any(), name  # both stages pad
        want, lost = dense(windows, pos, pos, size[0] * size[1], size[0] * size[1])
        close(rec.matrix, want, msg=name)
        close(rec.padding_mass(), lost, msg=name)
        shifted += int(layer.shift_size > 0)
        if layer.shift_size:
            ws = layer.window_size
            hp, wp = padded(size, (ws, ws))
            assert torch.equal(mask, shift_mask(hp, wp, (ws, ws), (layer.shift_size,) * 2))
    assert shifted == 2
    assert tuple(r.rec) == tuple(window_names(r))


def test_hugging_face_swin_sdpa_and_eager_agree(hf_swin_runs: dict[str, Run]) -> None:
    sdpa, eager = hf_swin_runs["sdpa"], hf_swin_runs["eager"]
    assert list(sdpa.rec) == list(eager.rec)
    for name in sdpa.rec:
        close(sdpa.rec[name].windows, eager.rec[name].windows, SAME, msg=name)


# -- timm Swin v2 and v2-cr --------------------------------------------------------------------
def log_coords_table(wh: int, ww: int) -> torch.Tensor:
    """Swin v2's continuous position table: (2wh-1) x (2ww-1) x 2 of
    sign(d) log2(1 + |8 d / (w - 1)|) / 3."""
    dy = torch.arange(-(wh - 1), wh, dtype=torch.float32) / (wh - 1) * 8
    dx = torch.arange(-(ww - 1), ww, dtype=torch.float32) / (ww - 1) * 8
    t = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1)
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / 3.0


def swin_v2_windows(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """timm swin_transformer_v2.WindowAttention: cosine logits, 16 sigmoid(cpb) bias."""
    bw, n, c = x.shape
    heads = attn.num_heads
    bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    qkv = F.linear(x, attn.qkv.weight, bias)
    q, k = heads_of(qkv[..., :c], heads), heads_of(qkv[..., c : 2 * c], heads)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    logits = logits * attn.logit_scale.clamp(max=math.log(100.0)).exp()
    wh, ww = attn.window_size
    l1, l2 = attn.cpb_mlp[0], attn.cpb_mlp[2]
    table = F.linear(F.relu(F.linear(log_coords_table(wh, ww), l1.weight, l1.bias)), l2.weight)
    bias = table.reshape(-1, heads)[rel_index(wh, ww)].permute(2, 0, 1)
    logits = logits + 16 * torch.sigmoid(bias)
    logits = logits.reshape(2, bw // 2, heads, n, n)
    if mask is not None:
        logits = logits + mask[None, :, None]
    return logits.softmax(-1)


def swin_v2_cr_windows(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """timm swin_transformer_v2_cr.WindowMultiHeadAttention: cosine logits, meta-MLP bias."""
    bw, n, c = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
    q, k = heads_of(qkv[..., :c], heads), heads_of(qkv[..., c : 2 * c], heads)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    logits = logits * attn.logit_scale.clamp(max=math.log(100.0)).exp()[:, None, None]
    wh, ww = attn.window_size
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    yx = torch.stack([ys.flatten(), xs.flatten()], -1).float()
    d = yx[:, None, :] - yx[None, :, :]  # query - key, N x N x 2
    d = torch.sign(d) * torch.log1p(d.abs())
    mlp = attn.meta_mlp
    bias = F.linear(F.relu(F.linear(d, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    logits = logits + bias.permute(2, 0, 1)
    logits = logits.reshape(2, bw // 2, heads, n, n)
    if mask is not None:
        logits = logits + mask[None, :, None]
    return logits.softmax(-1)


@pytest.mark.parametrize(
    ("model_name", "attn_type", "method", "expected"),
    [
        pytest.param(
            "swinv2_tiny_window8_256",
            "timm.models.swin_transformer_v2.WindowAttention",
            "_attn",
            swin_v2_windows,
            id="v2",
        ),
        pytest.param(
            "swinv2_cr_tiny_ns_224",
            "timm.models.swin_transformer_v2_cr.WindowMultiHeadAttention",
            "_shifted_window_attn",
            swin_v2_cr_windows,
            id="v2-cr",
        ),
    ],
)
def test_timm_swin_v2_matrix_and_placement(
    model_name: str, attn_type: str, method: str, expected: Callable
) -> None:
    torch.manual_seed(4)
    model = timm_swin(model_name)
    r = run(model, torch.randn(2, 3, *SWIN_SIZE), of_type(attn_type))
    shifted = 0
    for name in window_names(r):
        block = r.model.get_submodule(name.rsplit(".", 1)[0])
        rec = r.rec[name]
        (x,), kw = r.inputs[name]
        mask = kw.get("mask")
        size = rec.geometry.query_size
        if any(block.shift_size):
            shifted += 1
            hp, wp = padded(size, block.window_size)
            assert torch.equal(mask, shift_mask(hp, wp, block.window_size, block.shift_size))
        windows = expected(block.attn, x, mask)
        close(rec.windows, windows, msg=name)
        pos = timm_swin_positions(block, size)
        assert torch.equal(pos, block_positions(block, method, size)), name
        assert torch.equal(rec.geometry.query_pos, pos), name
        assert torch.equal(rec.geometry.key_pos, pos), name
        want, lost = dense(windows, pos, pos, size[0] * size[1], size[0] * size[1])
        close(rec.matrix, want, msg=name)
        close(rec.padding_mass(), lost, msg=name)
    assert shifted == 2


# -- global token layouts: the patch each token comes from -------------------------------------
def token_of_patch(
    model: nn.Module,
    first_attn: str,
    x: torch.Tensor,
    cell: tuple[int, int],
    patch: int,
    **kwargs: Any,
) -> list[int]:
    """Which tokens of the first attention's input change when only the image patch at
    grid cell ``cell`` changes (everything before the first attention is per token)."""
    module = model.get_submodule(first_attn)
    seen = []
    for img in (x, x.clone()):
        i, j = cell
        if seen:
            img[:, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch] += 1.0
        seen.append(first_input(module, lambda img=img: model(img, **kwargs)))
    diff = (seen[0] - seen[1]).abs().amax(dim=(0, 2))
    return diff.nonzero().flatten().tolist()


# -- Hugging Face ViT-style encoders -----------------------------------------------------------
HF_SIZE = (32, 48)  # patch 8: a 4 x 6 grid
HF_FAMILIES = {
    # name: (model, config, config kwargs, square config?, forward kwargs, prefix)
    "vit": ("ViTModel", "ViTConfig", {}, False, {}, ("cls",)),
    "deit": ("DeiTModel", "DeiTConfig", {}, False, {}, ("cls", "dist")),
    "dinov2": ("Dinov2Model", "Dinov2Config", {}, True, {}, ("cls",)),
    "dinov2_reg": (
        "Dinov2WithRegistersModel",
        "Dinov2WithRegistersConfig",
        {"num_register_tokens": 4},
        True,
        {},
        ("cls", "reg1", "reg2", "reg3", "reg4"),
    ),
    "clip": (
        "CLIPVisionModel",
        "CLIPVisionConfig",
        {},
        True,
        {"interpolate_pos_encoding": True},
        ("cls",),
    ),
    "siglip": (
        "SiglipVisionModel",
        "SiglipVisionConfig",
        {},
        True,
        {"interpolate_pos_encoding": True},
        (),
    ),
    # square: BEiT's relative-position table is resized per input, and only a square one
    # is laid out as its index expects
    "beit": ("BeitModel", "BeitConfig", {"use_relative_position_bias": True}, True, {}, ("cls",)),
}


def _hf_attention(m: nn.Module) -> bool:
    return (
        type(m).__module__.startswith("transformers.")
        and hasattr(m, "q_proj")
        and hasattr(m, "k_proj")
    )


def beit_index(wh: int, ww: int) -> torch.Tensor:
    """BEiT's index: patches query - key, then three entries for the class token (row 0:
    L - 3, column 0: L - 2, [0, 0]: L - 1)."""
    n = wh * ww
    length = (2 * wh - 1) * (2 * ww - 1) + 3
    idx = torch.empty(n + 1, n + 1, dtype=torch.long)
    idx[1:, 1:] = rel_index(wh, ww)
    idx[0, :] = length - 3
    idx[:, 0] = length - 2
    idx[0, 0] = length - 1
    return idx


def hf_global_matrix(r: Run, name: str, family: str) -> torch.Tensor:
    attn = r.model.get_submodule(name)
    args, kw = r.inputs[name]
    x = args[0] if args else kw["hidden_states"]
    mask = args[1] if len(args) > 1 else kw.get("attention_mask")
    heads = getattr(attn, "num_attention_heads", None) or attn.num_heads
    q, k = heads_of(attn.q_proj(x), heads), heads_of(attn.k_proj(x), heads)
    logits = q @ k.transpose(-2, -1) * attn.head_dim**-0.5
    if family == "beit":
        layer = r.model.get_submodule(name.rsplit(".", 1)[0])
        grid = r.rec[name].query_size
        bias = layer.relative_position_bias.relative_position_bias_table[beit_index(*grid)]
        bias = bias.permute(2, 0, 1)[None]
        close(mask, bias, msg=f"{name}: the bias BEiT passes as attention_mask")
        logits = logits + bias
    else:
        assert mask is None, name
    return logits.softmax(-1)


def hf_model(family: str, impl: str) -> nn.Module:
    model_cls, cfg_cls, extra, square, _, _ = HF_FAMILIES[family]
    cfg = getattr(transformers, cfg_cls)(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32 if square else list(HF_SIZE),
        patch_size=8,
        **extra,
    )
    model = getattr(transformers, model_cls)._from_config(cfg, attn_implementation=impl)
    return randomise(model)


@pytest.fixture(scope="module")
def hf_runs() -> dict[str, dict[str, Run]]:
    """sdpa and eager runs of each family, with the same weights and images."""
    out: dict[str, dict[str, Run]] = {}
    for family, (*_, fkw, _prefix) in HF_FAMILIES.items():
        size = (32, 32) if family == "beit" else HF_SIZE
        torch.manual_seed(5)
        x = torch.randn(2, 3, *size)
        sdpa = hf_model(family, "sdpa")
        eager = hf_model(family, "eager")
        eager.load_state_dict(sdpa.state_dict())
        out[family] = {
            "sdpa": run(sdpa, x, _hf_attention, **fkw),
            "eager": run(eager, x, _hf_attention, output_attentions=True, **fkw),
        }
    return out


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_hugging_face_global_matrix_prefix_and_grid(hf_runs: dict, family: str) -> None:
    *_, fkw, prefix = HF_FAMILIES[family]
    for impl, r in hf_runs[family].items():
        names = window_names(r)
        assert len(names) == 2, names
        grid = (r.image_size[0] // 8, r.image_size[1] // 8)
        for name in names:
            rec = r.rec[name]
            assert isinstance(rec, SelfAttentionRecord), name  # factored or whole
            assert rec.prefix == prefix, (impl, name)
            assert (rec.query_size, rec.key_size) == (grid, grid), (impl, name)
            assert rec.meta["kernel"] == KERNEL[impl]
            close(rec.matrix, hf_global_matrix(r, name, family), msg=f"{family} {impl} {name}")
    # the patch at grid cell (1, 4) is token len(prefix) + 1 * W + 4 of the first layer
    r = hf_runs[family]["sdpa"]
    cell = (1, 2) if family == "beit" else (1, 4)
    want = [len(prefix) + cell[0] * r.rec[names[0]].query_size[1] + cell[1]]
    assert token_of_patch(r.model, names[0], r.x, cell, 8, **fkw) == want


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_hugging_face_sdpa_and_eager_give_the_same_records(hf_runs: dict, family: str) -> None:
    sdpa, eager = hf_runs[family]["sdpa"], hf_runs[family]["eager"]
    assert list(sdpa.rec) == list(eager.rec)
    for name in sdpa.rec:
        a, b = sdpa.rec[name], eager.rec[name]
        assert a.prefix == b.prefix
        close(a.matrix, b.matrix, SAME, msg=name)
    # eager: the record is what the model returns as its attentions (post-softmax)
    returned = eager.output.attentions
    names = window_names(eager)
    assert len(returned) == len(names)
    for name, att in zip(names, returned):
        close(eager.rec[name].matrix, att, {"rtol": 0, "atol": 0}, msg=name)


# -- timm global attention: BEiT, EVA-02, CaiT -------------------------------------------------
TIMM_VIT_KW = {"img_size": HF_SIZE, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


def timm_model(name: str, **kw: Any) -> nn.Module:
    return randomise(timm.create_model(name, pretrained=False, num_classes=3, **kw))


def set_fused(model: nn.Module, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def timm_beit_matrix(attn: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    c, heads = x.shape[-1], attn.num_heads
    bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    qkv = F.linear(x, attn.qkv.weight, bias)
    q, k = heads_of(qkv[..., :c], heads), heads_of(qkv[..., c : 2 * c], heads)
    logits = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    logits = logits + attn.relative_position_bias_table[beit_index(*grid)].permute(2, 0, 1)
    return logits.softmax(-1)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_timm_beit_relative_position_bias_with_class_entries(fused: bool) -> None:
    torch.manual_seed(6)
    model = timm_model("beit_base_patch16_224", **TIMM_VIT_KW)
    set_fused(model, fused)
    r = run(model, torch.randn(2, 3, *HF_SIZE), of_type("timm.models.beit.Attention"))
    grid = (4, 6)
    for name in window_names(r):
        rec = r.rec[name]
        assert rec.prefix == ("cls",) and rec.query_size == rec.key_size == grid
        (x, *_), _ = r.inputs[name]
        close(rec.matrix, timm_beit_matrix(r.model.get_submodule(name), x, grid), msg=name)
        # the class token's own entries: row 0 and column 0 use the three extra rows
        assert rec.token_attention("cls").shape == (2, *grid)
    assert token_of_patch(r.model, "blocks.0.attn", r.x, (2, 5), 8) == [1 + 2 * 6 + 5]


def test_timm_eva02_rope_fused_and_explicit_agree() -> None:
    """RoPE rotates q and k before the kernel; the fused record (rebuilt from SDPA's
    rotated arguments) must equal the explicit softmax of the unfused path."""
    torch.manual_seed(7)
    model = timm_model("eva02_tiny_patch14_224", num_reg_tokens=2, **TIMM_VIT_KW)
    x = torch.randn(2, 3, *HF_SIZE)
    hooked = of_type("timm.models.eva.EvaAttention")
    set_fused(model, True)
    fused = run(model, x, hooked)
    set_fused(model, False)
    explicit = run(model, x, hooked)
    torch.testing.assert_close(fused.output, explicit.output, rtol=1e-4, atol=1e-5)
    names = window_names(fused)
    assert len(names) == 2
    for name in names:
        a, b = fused.rec[name], explicit.rec[name]
        assert a.meta["kernel"] == "scaled_dot_product_attention"
        assert b.meta["kernel"] == "softmax, then matrix @ values"
        assert a.prefix == b.prefix == ("cls", "reg1", "reg2")
        assert a.query_size == a.key_size == (4, 6)
        close(a.matrix, b.matrix, SAME, msg=name)
        assert a.matrix.amax() > 0.5  # peaked: the comparison is not between uniform rows
    assert token_of_patch(model, "blocks.0.attn", x, (3, 1), 8) == [3 + 3 * 6 + 1]


@pytest.fixture(scope="module")
def cait() -> Run:
    torch.manual_seed(8)
    model = timm_model("cait_xxs24_224", depth_token_only=2, **TIMM_VIT_KW)
    hooked = of_type("timm.models.cait.TalkingHeadAttn", "timm.models.cait.ClassAttn")
    return run(model, torch.randn(2, 3, *HF_SIZE), hooked)


def test_timm_cait_talking_heads_record_the_mixed_matrix(cait: Run) -> None:
    """The applied matrix is proj_w's output (heads mixed after the softmax)."""
    for name in ("blocks.0.attn", "blocks.1.attn"):
        attn = cait.model.get_submodule(name)
        (x,), _ = cait.inputs[name]
        c, heads = x.shape[-1], attn.num_heads
        qkv = attn.qkv(x)
        q, k = heads_of(qkv[..., :c], heads), heads_of(qkv[..., c : 2 * c], heads)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        mix = F.linear(logits.permute(0, 2, 3, 1), attn.proj_l.weight, attn.proj_l.bias)
        soft = mix.softmax(-2)  # softmax over keys, heads last
        applied = F.linear(soft, attn.proj_w.weight, attn.proj_w.bias).permute(0, 3, 1, 2)
        rec = cait.rec[name]
        assert rec.prefix == () and rec.query_size == rec.key_size == (4, 6)
        close(rec.matrix, applied, msg=name)
        assert (rec.matrix.sum(-1) - 1).abs().max() > 0.1  # not the softmax itself


def test_timm_cait_class_attention(cait: Run) -> None:
    for name in ("blocks_token_only.0.attn", "blocks_token_only.1.attn"):
        attn = cait.model.get_submodule(name)
        (u,), _ = cait.inputs[name]
        heads = attn.num_heads
        q = heads_of(attn.q(u[:, :1]), heads)
        k = heads_of(attn.k(u), heads)
        want = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # B x heads x 1 x (1 + N)
        rec = cait.rec[name]
        assert rec.prefix == ("cls",) and rec.key_size == (4, 6)
        assert rec.matrix.shape == (2, heads, 1, 25)
        close(rec.matrix, want, msg=name)
        cls = rec.token_attention("cls")
        assert cls.shape == (2, 4, 6)
        close(cls, want[:, :, 0, 1:].mean(1).reshape(2, 4, 6), msg=name)
        for h in range(heads):
            close(rec.token_attention("cls", head=h), want[:, h, 0, 1:].reshape(2, 4, 6))


# -- PVT-v2: keys on the spatial-reduction grid -------------------------------------------------
def pvt_run(linear: bool = False) -> Run:
    torch.manual_seed(9)
    model = timm_model("pvt_v2_b0", depths=(1, 1, 1, 1), linear=linear)
    return run(model, torch.randn(2, 3, 72, 104), of_type("timm.models.pvt_v2.Attention"))


@pytest.fixture(scope="module")
def pvt() -> Run:
    return pvt_run()


def test_timm_pvt_v2_linear_keys_on_pooled_bins() -> None:
    """pvt_v2_*_li: AdaptiveAvgPool2d(7), 1 x 1 conv, LayerNorm, GELU: always 7 x 7 keys."""
    r = pvt_run(linear=True)
    for name in window_names(r):
        attn = r.model.get_submodule(name)
        (x, (h, w)), _ = r.inputs[name]
        b, _, c = x.shape
        heads = attn.num_heads
        y = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(b, c, h, w), 7)
        y = F.conv2d(y, attn.sr.weight, attn.sr.bias).flatten(2).transpose(1, 2)
        y = F.gelu(F.layer_norm(y, (c,), attn.norm.weight, attn.norm.bias, attn.norm.eps))
        q = heads_of(attn.q(x), heads)
        k = heads_of(F.linear(y, attn.kv.weight[:c], attn.kv.bias[:c]), heads)
        rec = r.rec[name]
        assert (rec.query_size, rec.key_size) == ((h, w), (7, 7)), name
        close(rec.matrix, ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1), msg=name)


def test_timm_pvt_v2_keys_on_the_reduced_grid(pvt: Run) -> None:
    r = pvt
    sizes = []
    for name in window_names(r):
        attn = r.model.get_submodule(name)
        (x, feat), _ = r.inputs[name]
        b, _, c = x.shape
        heads, (h, w) = attn.num_heads, feat
        q = heads_of(attn.q(x), heads)
        if attn.sr is not None:
            sr = attn.sr.stride[0]
            y = F.conv2d(
                x.transpose(1, 2).reshape(b, c, h, w), attn.sr.weight, attn.sr.bias, stride=sr
            )
            keys = (h // sr, w // sr)
            assert y.shape[-2:] == keys
            y = F.layer_norm(
                y.flatten(2).transpose(1, 2), (c,), attn.norm.weight, attn.norm.bias, attn.norm.eps
            )
        else:
            y, keys = x, (h, w)
        k = heads_of(F.linear(y, attn.kv.weight[:c], attn.kv.bias[:c]), heads)
        want = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
        rec = r.rec[name]
        assert (rec.query_size, rec.key_size) == ((h, w), keys), name
        close(rec.matrix, want, msg=name)
        sizes.append(((h, w), keys))
    # stride-4 18 x 26 map, sr 8, 4, 2, 1: rows and columns past floor(H / sr) sr are never keys
    assert sizes == [((18, 26), (2, 3)), ((9, 13), (2, 3)), ((5, 7), (2, 3)), ((3, 4), (3, 4))]


# -- MaxViT (timm): block and grid partitions ---------------------------------------------------
MAXVIT_SIZE = (128, 96)  # partitions of 4 x 3 (img / 32); maps 32 x 24, 16 x 12, 8 x 6, 4 x 3


@pytest.fixture(scope="module")
def maxvit() -> Run:
    torch.manual_seed(10)
    model = timm_model("maxvit_pico_rw_256", img_size=MAXVIT_SIZE, depths=(1, 1, 1, 1))
    return run(model, torch.randn(2, 3, *MAXVIT_SIZE), of_type("timm.models.maxxvit.AttentionCl"))


def maxvit_groups(attn: nn.Module, x: torch.Tensor, g: tuple[int, int]) -> torch.Tensor:
    """timm maxxvit.AttentionCl (head_first) on partitions (B n x g x g x C):
    B x n x heads x Q x K."""
    heads, d = attn.num_heads, attn.dim_head
    t = x.reshape(x.shape[0], -1, x.shape[-1])
    qkv = F.linear(t, attn.qkv.weight, attn.qkv.bias)
    qkv = qkv.reshape(t.shape[0], t.shape[1], heads, 3 * d).transpose(1, 2)
    q, k = qkv[..., :d], qkv[..., d : 2 * d]
    logits = (q * d**-0.5) @ k.transpose(-2, -1)
    logits = logits + table_bias(attn.rel_pos.relative_position_bias_table, *g)
    return logits.softmax(-1).reshape(2, -1, heads, g[0] * g[1], g[0] * g[1])


def test_timm_maxvit_block_and_grid_partitions(maxvit: Run) -> None:
    from timm.models.maxxvit import grid_partition, window_partition

    kinds = []
    for name in window_names(maxvit):
        block = maxvit.model.get_submodule(name.rsplit(".", 1)[0])
        rec = maxvit.rec[name]
        (x,), _ = maxvit.inputs[name]
        g = tuple(block.partition_size)
        assert g == (4, 3)
        windows = maxvit_groups(block.attn, x, g)
        close(rec.windows, windows, msg=name)
        size = rec.geometry.query_size
        part = window_partition if block.partition_block else grid_partition
        pos = as_positions(part(index_image(*size), list(g)))
        img = index_image(*size, block.norm1.normalized_shape[0])
        own = as_positions(first_input(block.attn, lambda b=block, i=img: b._partition_attn(i)))
        assert torch.equal(pos, own), name
        assert torch.equal(rec.geometry.query_pos, pos), name
        assert torch.equal(rec.geometry.key_pos, pos), name
        n = size[0] * size[1]
        want, lost = dense(windows, pos, pos, n, n)
        close(rec.matrix, want, msg=name)
        assert lost.abs().max() == 0  # no padding in MaxViT
        kinds.append(("block" if block.partition_block else "grid", size))
    maps = ((32, 24), (16, 12), (8, 6), (4, 3))
    assert kinds == [(k, s) for s in maps for k in ("block", "grid")]
    # a grid group is a dilated lattice: group 0 of the 32 x 24 map holds rows 0, 8, 16, 24
    grid0 = maxvit.rec["stages.0.blocks.0.attn_grid.attn"].geometry.query_pos[0]
    assert sorted({int(p) // 24 for p in grid0}) == [0, 8, 16, 24]


# -- LeViT: attention biases --------------------------------------------------------------------
def levit_matrix(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm levit.Attention: BN-folded q/k (random running statistics) + |dy| W + |dx| bias."""
    lin, bn = attn.qkv.linear, attn.qkv.bn
    conv = attn.use_conv
    t = x.flatten(2).transpose(1, 2) if conv else x  # B x N x C
    y = F.linear(t, lin.weight.reshape(lin.weight.shape[0], -1))
    b, n, _ = y.shape
    y = F.batch_norm(
        y.flatten(0, 1), bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps
    ).reshape(b, n, -1)
    heads, kd = attn.num_heads, attn.key_dim
    y = y.reshape(b, n, heads, -1).transpose(1, 2)  # per head: key, key, value channels
    q, k = y[..., :kd], y[..., kd : 2 * kd]
    rh, rw = attn.resolution
    ys, xs = torch.meshgrid(torch.arange(rh), torch.arange(rw), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    idx = (ys[:, None] - ys[None, :]).abs() * rw + (xs[:, None] - xs[None, :]).abs()
    return (q @ k.transpose(-2, -1) * kd**-0.5 + attn.attention_biases[:, idx]).softmax(-1)


@pytest.mark.parametrize(
    ("model_name", "size"),
    [("levit_128s", (96, 96)), ("levit_conv_128s", (64, 96))],
    ids=["linear", "conv"],
)
def test_timm_levit_attention_biases(model_name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(11)
    small = {"embed_dim": (32, 48, 64), "key_dim": 8, "num_heads": (2, 3, 4), "depth": (1, 1, 1)}
    model = timm_model(model_name, img_size=size, **small)
    r = run(model, torch.randn(2, 3, *size), of_type("timm.models.levit.Attention"))
    grids = []
    for name in window_names(r):
        attn = r.model.get_submodule(name)
        (x,), _ = r.inputs[name]
        rec = r.rec[name]
        close(rec.matrix, levit_matrix(attn, x), msg=name)
        assert rec.query_size == rec.key_size == tuple(attn.resolution), name
        grids.append(rec.query_size)
    assert grids[0] == (size[0] // 16, size[1] // 16)
    # the stride-2 attention between stages: exact, and placed nowhere rather than wrongly
    for name in ("stages.1.downsample.attn_downsample", "stages.2.downsample.attn_downsample"):
        what = type(r.model.get_submodule(name)).__name__
        unplaced = r.rec[name].geometry.unplaced
        assert unplaced == f"attnviz knows no layout for {what} that places its tokens on the image"


# -- ConViT: gated positional self-attention ----------------------------------------------------
def test_timm_convit_gpsa_records_the_gated_mix() -> None:
    torch.manual_seed(12)
    model = timm_model(
        "convit_tiny",
        img_size=48,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        local_up_to_layer=1,
    )
    hooked = of_type("timm.models.convit.GPSA", "timm.models.convit.MHSA")
    r = run(model, torch.randn(2, 3, 48, 48), hooked)
    gpsa = r.model.get_submodule("blocks.0.attn")
    (x,), _ = r.inputs["blocks.0.attn"]
    c = x.shape[-1]
    heads, side = gpsa.num_heads, 6
    qk = gpsa.qk(x)
    q, k = heads_of(qk[..., :c], heads), heads_of(qk[..., c:], heads)
    patch = ((q @ k.transpose(-2, -1)) * gpsa.scale).softmax(-1)
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ys, xs = ys.flatten().float(), xs.flatten().float()
    dx, dy = xs[None, :] - xs[:, None], ys[None, :] - ys[:, None]  # key - query
    rel = torch.stack([dx, dy, dx**2 + dy**2], -1)
    pos = F.linear(rel, gpsa.pos_proj.weight, gpsa.pos_proj.bias).permute(2, 0, 1).softmax(-1)
    gate = torch.sigmoid(gpsa.gating_param)[:, None, None]
    mixed = (1 - gate) * patch + gate * pos
    mixed = mixed / mixed.sum(-1, keepdim=True)
    rec = r.rec["blocks.0.attn"]
    assert rec.prefix == () and rec.query_size == (side, side)
    close(rec.matrix, mixed, msg="GPSA")
    assert (rec.matrix - patch).abs().max() > 0.05  # neither softmax alone
    mhsa = r.rec["blocks.1.attn"]
    assert mhsa.prefix == ("cls",) and mhsa.matrix.shape == (2, heads, 37, 37)


# -- XCiT: channel attention is recorded but not placed ----------------------------------------
def test_timm_xcit_channel_attention_is_unplaced() -> None:
    torch.manual_seed(13)
    model = timm_model("xcit_nano_12_p16_224", img_size=64, depth=2)
    hooked = of_type("timm.models.xcit.XCA", "timm.models.cait.ClassAttn")
    r = run(model, torch.randn(2, 3, 64, 64), hooked)
    for name in ("blocks.0.attn", "blocks.1.attn"):
        attn = r.model.get_submodule(name)
        (x,), _ = r.inputs[name]
        c, heads = x.shape[-1], attn.num_heads
        qkv = attn.qkv(x)  # B x N x 3C; channels per head, normalised over the tokens
        q = F.normalize(heads_of(qkv[..., :c], heads).transpose(-2, -1), dim=-1)
        k = F.normalize(heads_of(qkv[..., c : 2 * c], heads).transpose(-2, -1), dim=-1)
        want = (q @ k.transpose(-2, -1) * attn.temperature).softmax(-1)
        rec = r.rec[name]
        assert rec.geometry.unplaced == (
            "attnviz knows no layout for XCA that places its tokens on the image"
        )
        assert rec.matrix.shape == (2, heads, c // heads, c // heads)
        close(rec.matrix, want, msg=name)
        with pytest.raises(ValueError, match="no layout"):
            _ = rec.query_size
        with pytest.raises(ValueError, match="no layout"):
            rec.received()
        with pytest.raises(ValueError, match="no layout"):
            rec.key_row((1, 1), (64, 64))
    for name in ("cls_attn_blocks.0.attn", "cls_attn_blocks.1.attn"):
        rec = r.rec[name]
        assert rec.prefix == ("cls",) and rec.key_size == (4, 4)
        assert rec.token_attention("cls").shape == (2, 4, 4)


# -- every layout's grid methods are slices of the dense matrix --------------------------------
def check_grid_methods(rec: SelfAttentionRecord, image_size: tuple[int, int]) -> None:
    """key_row, query_map, received and token_attention against the dense ``matrix``."""
    m = rec.matrix.float()
    p = len(rec.prefix)
    b, heads = m.shape[:2]
    (hq, wq), (hk, wk) = rec.query_size, rec.key_size
    patches = m[:, :, p:, p:]
    assert patches.shape == (b, heads, hq * wq, hk * wk)
    ih, iw = image_size
    points = [(0, 0), (iw - 1, ih - 1), (iw // 2, ih // 3), (0.7 * iw, 0.9 * ih), (iw - 1, 0)]
    for x, y in points:
        i, j = min(int(y * hq / ih), hq - 1), min(int(x * wq / iw), wq - 1)
        assert rec.query_cell((x, y), image_size) == (i, j)
        for head in (None, 0, heads - 1):
            rows = patches[:, :, i * wq + j]
            row = (rows.mean(1) if head is None else rows[:, head]).reshape(b, hk, wk)
            got = rec.key_row((x, y), image_size, head=head)
            assert got.shape == (b, hk, wk)
            close(got, row, msg=f"{rec.name} key_row {(x, y)} head {head}")
            shown = rec.query_map((x, y), image_size, head=head)
            assert shown.shape == (b, ih, iw)
            up = F.interpolate(row[:, None], size=image_size, mode="bilinear", align_corners=False)
            close(shown, up[:, 0], {"rtol": 1e-5, "atol": 1e-6}, msg=f"{rec.name} query_map")
    for head in (None, 0, heads - 1):
        per = patches.mean(1) if head is None else patches[:, head]
        got = rec.received(head=head)
        assert got.shape == (b, hk, wk)
        close(got, per.mean(1).reshape(b, hk, wk), msg=f"{rec.name} received head {head}")
    for t, token in enumerate(rec.prefix):
        for head in (None, 0, heads - 1):
            row = m[:, :, t, p:]
            row = row.mean(1) if head is None else row[:, head]
            got = rec.token_attention(token, head=head)
            assert got.shape == (b, hk, wk)
            close(got, row.reshape(b, hk, wk), msg=f"{rec.name} token {token}")
    with pytest.raises(ValueError):
        rec.token_attention("nope")
    with pytest.raises(ValueError):
        rec.key_row((iw, 0), image_size)  # outside the image


LAYOUTS = {
    # id: (fixture, how to pick its run, record name)
    "timm_swin_windows_padded": ("swin_v1", None, "layers.0.blocks.1.attn"),
    "timm_swin_windows_stage2": ("swin_v1", None, "layers.1.blocks.1.attn"),
    "hf_swin_windows": ("hf_swin_runs", ("sdpa",), "encoder.layers.1.blocks.1.attention"),
    "maxvit_block": ("maxvit", None, "stages.0.blocks.0.attn_block.attn"),
    "maxvit_grid": ("maxvit", None, "stages.1.blocks.0.attn_grid.attn"),
    "pvt_reduced_keys": ("pvt", None, "stages.0.blocks.0.attn"),
    "cait_patches_no_prefix": ("cait", None, "blocks.1.attn"),
    "hf_vit_cls": ("hf_runs", ("vit", "sdpa"), "layers.1.attention"),
    "hf_deit_cls_dist": ("hf_runs", ("deit", "eager"), "layers.0.attention"),
    "hf_dinov2_registers": ("hf_runs", ("dinov2_reg", "sdpa"), "encoder.layer.1.attention"),
    "hf_siglip_no_prefix": ("hf_runs", ("siglip", "sdpa"), "encoder.layers.0.self_attn"),
    "hf_beit_cls_bias": ("hf_runs", ("beit", "eager"), "layers.1.attention"),
}


def _layout_run(request: pytest.FixtureRequest, layout: str) -> tuple[Run, str]:
    fixture, pick, name = LAYOUTS[layout]
    r = request.getfixturevalue(fixture)
    for key in pick or ():
        r = r[key]
    return r, name


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_grid_methods_are_slices_of_the_dense_matrix(
    request: pytest.FixtureRequest, layout: str
) -> None:
    r, name = _layout_run(request, layout)
    check_grid_methods(r.rec[name], r.image_size)


def test_class_attention_grid_methods(cait: Run) -> None:
    rec = cait.rec["blocks_token_only.1.attn"]
    m = rec.matrix
    for head in (None, 0):
        row = m[:, :, 0, 1:].mean(1) if head is None else m[:, head, 0, 1:]
        close(rec.token_attention("cls", head=head), row.reshape(2, 4, 6))
    for method in (
        lambda: rec.query_size,
        lambda: rec.key_row((1, 1), HF_SIZE),
        lambda: rec.query_map((1, 1), HF_SIZE),
    ):
        with pytest.raises(ValueError, match="class attention"):
            method()
    # received(): "attention each key receives, averaged over all queries": the one query
    # is the class token, so its row; refusing like key_row would do too, NaN would not
    try:
        got = rec.received()
    except ValueError:
        return
    close(got, rec.token_attention("cls"), msg="received() of class attention")


# -- SigLIP's pooling head: torch's MultiheadAttention, a probe over all patches -----------------
def test_siglip_pooling_head_states_its_kernel(hf_runs: dict) -> None:
    rec = hf_runs["siglip"]["sdpa"].rec["head.attention"]
    assert rec.matrix.shape == (2, 4, 1, 24)  # one probe query over the 4 x 6 patches
    assert "kernel" in rec.meta and "kernel_shape" in rec.meta


def test_siglip_pooling_head_keys_on_the_patch_grid(hf_runs: dict) -> None:
    rec = hf_runs["siglip"]["sdpa"].rec["head.attention"]
    assert rec.key_size == (4, 6)
