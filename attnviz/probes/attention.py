"""Probes for self-attention and spatial transformers.

Self-attention is read where the module computes it (a submodule such as ``attend``, or a
watched ``softmax`` in the forward), and its values where the module applies it: the
matrix product that takes the attention matrix as its left operand. So the record holds
the matrix the module multiplied by and the values it multiplied, and the check
``matrix @ values == what the module computed`` is made on a sample of query rows.

- :class:`SelfAttentionProbe`: dense attention (non-local blocks, BoTNet), B*heads x Q x K
  or B x heads x Q x K;
- :class:`LocalAttentionProbe`: attention within local windows (HaloNet);
- :class:`BilinearAttentionProbe`: separable row and column attention (BAT);
- :class:`TransformProbe`: a spatial transformer's theta, checked by re-sampling a few
  output pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..records import (
    BilinearAttentionRecord,
    Geometry,
    LocalAttentionRecord,
    SelfAttentionRecord,
    TransformRecord,
    TwoStageTransformRecord,
)
from .base import Emission, Probe, same_tensor, spots, sums_to_one

__all__ = [
    "BilinearAttentionProbe",
    "LocalAttentionProbe",
    "SelfAttentionProbe",
    "TransformProbe",
    "TwoStageProbe",
]


def _input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("x")
    return x if isinstance(x, torch.Tensor) else None


def _consumer(probe: Probe, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (right operand, result) of the first matmul whose left operand is ``a``."""
    for args, _kwargs, out in probe.pieces.get("matmul", []):
        if len(args) >= 2 and same_tensor(args[0], a):
            return args[1], out
    return None


class SelfAttentionProbe(Probe):
    """Dense self-attention: a matrix over all key positions for every query.

    Args:
        name: the module's qualified name.
        module: the attention module.
        submodule: the submodule whose output is the matrix (e.g. ``"attend"``), or
        function: the watched function family that computes it (``"softmax"``).

    The matrix may come as B*heads x Q x K (heads folded into the batch) or
    B x heads x Q x K. Query and key grids are the module's ``query_size`` / ``key_size``
    attributes when it states them, else the input's H x W when Q = K = H W.
    """

    kind = "self"
    record_type = SelfAttentionRecord

    def __init__(
        self, name: str, module: nn.Module, *, submodule: str = "", function: str | None = None
    ) -> None:
        super().__init__(name, module)
        if bool(submodule) == bool(function):
            raise ValueError("a self-attention probe reads either a submodule or a function")
        self.submodule, self.function_name = submodule, function
        self.watch = frozenset({"matmul", *([function] if function else [])})
        self._source = module.get_submodule(submodule) if submodule else None
        self.normalised = function == "softmax" or isinstance(self._source, nn.Softmax)

    def taps(self) -> dict[str, nn.Module]:
        return {"matrix": self._source} if self._source is not None else {}

    def where(self) -> str:
        if self.function_name:
            return f"the {self.function_name} in its forward"
        return f"its submodule {self.submodule!r}"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        mats = self.outputs(self.function_name or "matrix")
        x = _input(args, kwargs)
        if len(mats) != 1 or x is None:
            return self.missing()
        a = mats[0]
        applied = _consumer(self, a)
        if applied is None:
            return Emission(
                problem=f"{self.name}: its attention matrix was computed but not multiplied "
                "with values in the forward, so what it applied cannot be recorded"
            )
        v, result = applied
        b = x.shape[0]
        if a.dim() == 3 and a.shape[0] % b == 0:
            heads = a.shape[0] // b
        elif a.dim() == 4 and a.shape[0] == b:
            heads = a.shape[1]
        else:
            return Emission(problem=f"{self.name}: an attention matrix of shape {tuple(a.shape)}")
        q, k = a.shape[-2:]
        matrix = a.reshape(b, heads, q, k)
        values = v.reshape(b, heads, k, -1)
        rows = spots(q, 16)
        em = Emission(fields={"matrix": matrix, "values": values}, geometry=self._geometry(x, q, k))
        em.compare(
            "matrix @ values == module's product",
            lambda: (result.reshape(b, heads, q, -1)[:, :, rows], matrix[:, :, rows] @ values),
        )
        if self.normalised:
            em.check("rows sum to 1", lambda: sums_to_one(matrix[:, :, rows], -1))
        if self.keep_features:
            em.fields["features"] = x
        return em

    def _geometry(self, x: torch.Tensor, q: int, k: int) -> Geometry:
        """The grids the module states (its ``query_size`` / ``key_size`` attributes), else
        the input's H x W where the queries (keys) are its positions."""
        h, w = (int(s) for s in x.shape[-2:])

        def grid(attribute: str, n: int) -> tuple[int, int] | None:
            size = getattr(self.module, attribute, None)
            if size is not None:
                return int(size[0]), int(size[1])
            return (h, w) if n == h * w else None

        return Geometry(grid("query_size", q), grid("key_size", k))


class LocalAttentionProbe(Probe):
    """HaloNet's blocked local attention (timm ``HaloAttn``).

    The watched softmax gives B*heads x blocks x block_q^2 x window^2; the product with the
    windowed values (B*heads x blocks x window^2 x D) is the module's output before it is
    laid back onto the grid. The values are recorded on the key grid (B x heads x H W x D),
    taken from each block's own pixels of its window; padded keys have zero values.
    """

    kind = "self"
    record_type = LocalAttentionRecord
    watch = frozenset({"softmax", "matmul"})

    def where(self) -> str:
        return "the softmax in its forward"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        mats, x, m = self.outputs("softmax"), _input(args, kwargs), self.module
        if len(mats) != 1 or x is None:
            return self.missing()
        a = mats[0]
        applied = _consumer(self, a)
        if applied is None:
            return Emission(problem=f"{self.name}: its attention was not multiplied with values")
        v, result = applied
        b, _, h, w = x.shape
        # plain int attributes of the module (typed Tensor | Module by nn.Module.__getattr__)
        bs, halo = cast(int, m.block_size), cast(int, m.halo_size)
        win, qb = cast(int, m.win_size), cast(int, m.block_size_ds)
        nh, nw, heads = h // bs, w // bs, cast(int, m.num_heads)
        windows = a.reshape(b, heads, nh * nw, qb * qb, win * win)
        dv = v.shape[-1]
        own = v.reshape(b, heads, nh, nw, win, win, dv)[
            :, :, :, :, halo : halo + bs, halo : halo + bs
        ]
        values = own.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, heads, h * w, dv)
        meta = {"block": bs, "halo": halo, "window": win, "blocks": (nh, nw)}
        what = f"{type(m).__name__}: blocks of {bs} x {bs} pixels, halo {halo}"
        geometry = Geometry((nh * qb, nw * qb), (h, w), source=what)
        em = Emission(fields={"windows": windows, "values": values}, meta=meta, geometry=geometry)
        rows = spots(a.shape[-2], 16)
        em.compare(
            "matrix @ values == module's product", lambda: (result[:, :, rows], a[:, :, rows] @ v)
        )
        em.check("rows sum to 1", lambda: sums_to_one(a[:, :, rows], -1))
        if self.keep_features:
            em.fields["features"] = x
        return em


class BilinearAttentionProbe(Probe):
    """BAT's bilinear attention transform (timm ``BilinearAttnTransform``): ``y = P x Q``.

    The two watched matrix products give P (the left operand of the product with the
    module's input) and Q (the right operand of the product with its result), each expanded
    over the channels of a group; one per group is recorded.
    """

    kind = "self"
    record_type = BilinearAttentionRecord
    watch = frozenset({"matmul"})

    def where(self) -> str:
        return "the matrix products in its forward"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        x = _input(args, kwargs)
        calls = self.pieces.get("matmul", [])
        first = next((c for c in calls if len(c[0]) >= 2 and same_tensor(c[0][1], x)), None)
        if x is None or first is None:
            return self.missing()
        second = next((c for c in calls if same_tensor(c[0][0], first[2])), None)
        if second is None:
            return self.missing()
        p, q, y = first[0][0], second[0][1], second[2]
        b, c, h, w = x.shape
        g = int(cast(int, self.module.groups))  # a plain int attribute of the module
        per = c // g
        rows = p.reshape(b, g, per, h, h)[:, :, 0]
        cols = q.reshape(b, g, per, w, w)[:, :, 0]
        values = x.reshape(b, g, per, h * w).transpose(-1, -2)
        em = Emission(
            fields={"rows": rows, "cols": cols, "values": values}, geometry=Geometry((h, w), (h, w))
        )
        i, j = spots(h), spots(w)

        def shared() -> torch.Tensor:  # P and Q were expanded over each group's channels
            dp = p.reshape(b, g, per, h, h) - rows[:, :, None]
            dq = q.reshape(b, g, per, w, w) - cols[:, :, None]
            return torch.maximum(dp.abs().amax(), dq.abs().amax())

        em.compare(
            "rows @ input @ cols == module's product",
            lambda: (y[:, :, i, j], p[:, :, i] @ x @ q[..., j]),
        )
        em.check("one matrix per channel group", shared)
        em.check(
            "rows and columns sum to 1",
            lambda: torch.maximum(sums_to_one(rows, -1), sums_to_one(cols, -2)),
        )
        if self.keep_features:
            em.fields["features"] = x
        return em


def _resampled(
    src: torch.Tensor, theta: torch.Tensor, out: torch.Tensor, sampler: Any, align: bool
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A check's pair: a sample of the output pixels, and the same pixels sampled again
    from ``src`` at ``theta``'s grid, bilinearly, with the sampler's ``padding_value``."""
    pad = getattr(sampler, "padding_value", None) or 0.0
    sh, sw = spots(out.shape[-2]), spots(out.shape[-1])

    def pair() -> tuple[torch.Tensor, torch.Tensor]:
        grid = F.affine_grid(theta, list(out.shape), align_corners=align)[:, sh, sw]
        again = F.grid_sample(src - pad, grid, mode="bilinear", align_corners=align) + pad
        return out[:, :, sh, sw], again

    return pair


class TransformProbe(Probe):
    """A spatial transformer: theta from a submodule, the sampled output, the input size.

    Checks that the output is the source bilinearly sampled at ``affine_grid(theta)`` on a
    sample of output pixels (with the module's ``sampler.padding_value``, if any).
    """

    kind = "transform"
    record_type = TransformRecord

    def __init__(self, name: str, module: nn.Module, *, submodule: str = "theta") -> None:
        super().__init__(name, module)
        self.submodule = submodule
        self._theta = module.get_submodule(submodule) if submodule else module

    def taps(self) -> dict[str, nn.Module]:
        return {"theta": self._theta}

    def where(self) -> str:
        return f"its submodule {self.submodule!r}"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        thetas = self.outputs("theta")
        if len(thetas) != 1:
            return self.missing()
        theta = thetas[0]
        src = kwargs.get("source")
        if src is None:
            src = args[1] if len(args) > 1 and args[1] is not None else _input(args, kwargs)
        src = cast(torch.Tensor, src)  # the module ran on its source, a tensor
        if theta.dim() != 3 or theta.shape[1:] != (2, 3) or not isinstance(output, torch.Tensor):
            return Emission(
                problem=f"{self.name}: theta of shape {tuple(theta.shape)}, not B x 2 x 3"
            )
        align = bool(getattr(self.module, "align_corners", False))
        meta = {"input_size": tuple(src.shape[-2:]), "align_corners": align}
        em = Emission(fields={"theta": theta, "output": output}, meta=meta)
        sampler = getattr(self.module, "sampler", None)
        em.compare(
            "output == source sampled at theta's grid",
            _resampled(src, theta, output, sampler, align),
        )
        return em


class TwoStageProbe(TransformProbe):
    """A two-stage transformer: the composed theta and output (checked as any transformer's),
    the first stage's window and crop, the second stage's rotation.

    Checks: the composed theta is the window times the rotation (``[A_1 R | t_1]``,
    exactly as composed); R is a rotation (R R^T = I, det R = 1); the crop is the input
    sampled at the window's grid.
    """

    record_type = TwoStageTransformRecord

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__(name, module, submodule="theta")

    def taps(self) -> dict[str, nn.Module]:
        m = self.module
        return {
            "theta": self._theta,
            "window": m.get_submodule("window"),
            "rotation": m.get_submodule("angle.rotation"),
            "crop": m.get_submodule("window_sampler"),
        }

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        em = super().end(args, kwargs, output)
        windows, rotations, crops = (self.outputs(k) for k in ("window", "rotation", "crop"))
        if em.problem is not None or not (len(windows) == len(rotations) == len(crops) == 1):
            return em if em.problem is not None else self.missing()
        theta, window, rot, crop = em.fields["theta"], windows[0], rotations[0], crops[0]
        x = cast(torch.Tensor, _input(args, kwargs))
        em.fields.update(window=window, rotation=rot, crop=crop)
        em.meta["window_size"] = tuple(crop.shape[-2:])
        em.compare(
            "theta == [window's A @ rotation | window's t]",
            lambda: (theta, torch.cat([window[:, :, :2] @ rot, window[:, :, 2:]], dim=2)),
        )

        def not_rotation() -> torch.Tensor:
            eye = torch.eye(2, dtype=rot.dtype, device=rot.device)
            orth = (rot @ rot.transpose(1, 2) - eye).abs().amax()
            return torch.maximum(orth, (torch.linalg.det(rot) - 1).abs().amax())

        em.check("rotation is a rotation", not_rotation)
        sampler = self.module.get_submodule("window_sampler")
        align = bool(getattr(self.module, "align_corners", False))
        em.compare(
            "crop == input sampled at the window's grid",
            _resampled(x, window, crop, sampler, align),
        )
        return em
