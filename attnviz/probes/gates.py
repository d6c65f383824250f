"""Probes for gates: attention that multiplies (or shifts) the features it is given.

- :class:`GateProbe`: channel, spatial, elementwise and axial gates, read from a submodule's
  output (``gate``) or from a watched function (a functional ``sigmoid``); checks
  ``output == input * gate`` (plus ``input`` for modules with a skip connection).
- :class:`SelectiveKernelProbe`, :class:`SplitAttentionProbe`: attention over branches
  (SKNet, ResNeSt); checks ``output == sum_k path_k * weights_k``.
- :class:`ContextProbe`: global-context attention (GCNet): the softmax pooling map, then a
  scale and/or a shift; checks ``output == input * scale + shift`` and
  ``context == sum_p map_p input_p``.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from torch import nn

from ..records import (
    AxialRecord,
    BranchRecord,
    ChannelRecord,
    ContextRecord,
    ElementwiseRecord,
    Record,
    SpatialRecord,
)
from .base import Emission, Probe, sample, sums_to_one

__all__ = [
    "ContextProbe",
    "GateProbe",
    "SelectiveKernelProbe",
    "SeparableContextProbe",
    "SplitAttentionProbe",
]

GATE_RECORDS: dict[str, type[Record]] = {
    "channel": ChannelRecord,
    "spatial": SpatialRecord,
    "elementwise": ElementwiseRecord,
    "axial": AxialRecord,
}


def _feature_map(name: str, args: tuple) -> torch.Tensor | str:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        return f"{name} expects a B x C x H x W input for its attention, got {shape}"
    return x


#: gate modules whose output lies in [0, 1] by construction
_SIGMOIDS = {
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.activation.Hardsigmoid",
    "timm.layers.activations.Sigmoid",
    "timm.layers.activations.HardSigmoid",
    "timm.layers.activations_me.HardSigmoidMe",
}


def _sigmoid(module: nn.Module | None) -> bool:
    if module is None:
        return False
    cls: type = type(module)  # as a plain type: mypy sees type[Module] as unhashable
    return _is_sigmoid_type(cls)


@functools.cache
def _is_sigmoid_type(cls: type) -> bool:
    return any(f"{t.__module__}.{t.__qualname__}" in _SIGMOIDS for t in cls.__mro__)


class GateProbe(Probe):
    """A gate the module multiplies its input by.

    Args:
        name: the module's qualified name.
        module: the attention module.
        kind: ``"channel"`` (B x C), ``"spatial"`` (B x H x W), ``"elementwise"``
            (B x C x H x W) or ``"axial"`` (B x C x H and B x C x W, the gate runs twice).
        submodule: dotted path of the submodule whose output is the gate; ``""`` with no
            ``function`` means the module's own output is the attention (nothing to check).
        function: instead of a submodule, the torch function family (``"sigmoid"``) whose
            call in the module's forward computes the gate.
        residual: name of a module attribute; when it is true the module adds its input
            back (``output = input * gate + input``).
        bounded: the gate should lie in [0, 1]; values outside are reported (a check that
            is skipped when the gate is a sigmoid module or function, which cannot leave it).
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        kind: str,
        *,
        submodule: str = "",
        function: str | None = None,
        residual: str | None = None,
        bounded: bool = True,
    ) -> None:
        super().__init__(name, module)
        if kind not in GATE_RECORDS:
            raise ValueError(f"a gate's kind is one of {sorted(GATE_RECORDS)}, got {kind!r}")
        self.kind = kind
        self.record_type = GATE_RECORDS[kind]
        self.submodule, self.function_name = submodule, function
        self.watch = frozenset({function}) if function else frozenset()
        self.applied = bool(submodule or function)
        self._gate = module.get_submodule(submodule) if submodule else None
        self.residual = residual
        # a sigmoid cannot leave [0, 1]: only a gate of another type needs its range checked
        self.bounded = bounded and function != "sigmoid" and not _sigmoid(self._gate)

    def taps(self) -> dict[str, nn.Module]:
        return {"gate": self._gate} if self._gate is not None else {}

    def where(self) -> str:
        if self.function_name:
            return f"the {self.function_name} in its forward"
        return f"its submodule {self.submodule!r}" if self.submodule else "its output"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        if not self.applied:
            return self._own_output(output)
        gates = self.outputs(self.function_name or "gate")
        if not gates:
            return self.missing()
        need = 2 if self.kind == "axial" else 1
        if len(gates) != need:
            return Emission(
                problem=(
                    f"{self.name}: {self.where()} ran {len(gates)} times in one forward, where "
                    f"a {self.kind} attention runs {need}; a gate applied along rows and "
                    "columns separately is kind 'axial'"
                )
            )
        x = _feature_map(self.name, args)
        if isinstance(x, str):
            return Emission(problem=x)
        built = getattr(self, f"_{self.kind}")(x, gates)
        if isinstance(built, str):
            return Emission(problem=f"{self.name}: {built}; check its registration")
        fields, factors = built
        if not isinstance(output, torch.Tensor) or output.shape != x.shape:
            return Emission(
                problem=f"{self.name}: its output is not a tensor shaped like its input"
            )
        sl = sample(x)
        residual = bool(self.residual and getattr(self.module, self.residual, False))

        def terms() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            gate = sl(factors[0]) if len(factors) == 1 else sl(factors[0]) * sl(factors[1])
            x_s, y_s = sl(x), sl(output)
            return (y_s - x_s if residual else y_s), x_s, gate

        em = Emission(fields=fields)
        em.compare_product(f"output == input * {self.kind} gate", terms)
        if self.bounded:
            main = next(iter(fields))
            for f in factors:
                em.check_range(f"0 <= {main} <= 1", functools.partial(sl, f))
        if self.keep_features:
            em.fields["features"] = x
        return em

    def _own_output(self, output: Any) -> Emission:
        if not isinstance(output, torch.Tensor):
            return Emission(problem=f"{self.name}: its output is no tensor")
        b = output.shape[0]
        if self.kind == "channel":
            return Emission(fields={"weights": output.reshape(b, -1)})
        if self.kind == "spatial" and output.dim() in (3, 4):
            return Emission(fields={"map": output[:, 0] if output.dim() == 4 else output})
        if self.kind == "elementwise" and output.dim() == 4:
            return Emission(fields={"gate": output})
        return Emission(
            problem=f"{self.name}: a {self.kind} attention of shape {tuple(output.shape)}"
        )

    # one builder per kind: (record fields, the factors the input is multiplied by), or why not
    def _channel(self, x: torch.Tensor, gates: list) -> tuple | str:
        a = gates[0]
        b, c = x.shape[:2]
        non_unit = [d for d in a.shape[1:] if d != 1]
        if a.shape[0] != b or a.numel() != b * c or len(non_unit) > 1:
            return (
                f"its attention has shape {tuple(a.shape)}, not one weight per channel of its "
                f"{c}-channel input (B x {c}, B x {c} x 1 x 1 or B x 1 x {c})"
            )
        w = a.reshape(b, c)
        return {"weights": w}, [a if a.shape == (b, c, 1, 1) else w[:, :, None, None]]

    def _spatial(self, x: torch.Tensor, gates: list) -> tuple | str:
        a = gates[0]
        m = a[:, 0] if a.dim() == 4 and a.shape[1] == 1 else a
        if m.dim() != 3 or m.shape[0] != x.shape[0] or m.shape[-2:] != x.shape[-2:]:
            return (
                f"its attention has shape {tuple(a.shape)}, not one weight per position of its "
                f"{tuple(x.shape[-2:])} input (B x 1 x H x W or B x H x W)"
            )
        return {"map": m}, [m[:, None]]

    def _elementwise(self, x: torch.Tensor, gates: list) -> tuple | str:
        a = gates[0]
        b, c, h, w = x.shape
        fits = a.dim() == 4 and tuple(a.shape[:2]) == (b, c) and a.shape[2] in (1, h)
        if not (fits and a.shape[3] in (1, w)):
            return f"its attention has shape {tuple(a.shape)}, not its input's {tuple(x.shape)}"
        # a gate pooled down to fewer positions (Gather-Excite on a small map) is applied by
        # broadcasting: the gate at every position is that broadcast value
        full = a if a.shape == x.shape else a.expand_as(x).contiguous()
        return {"gate": full}, [a]

    def _axial(self, x: torch.Tensor, gates: list) -> tuple | str:
        b, c, h, w = x.shape
        rows = [g for g in gates if tuple(g.shape) == (b, c, h, 1)]
        cols = [g for g in gates if tuple(g.shape) == (b, c, 1, w)]
        if h == 1 or w == 1 or len(rows) != 1 or len(cols) != 1:
            rows, cols = gates[:1], gates[1:]  # the order the module computed them in
            if tuple(rows[0].shape) != (b, c, h, 1) or tuple(cols[0].shape) != (b, c, 1, w):
                return (
                    f"its attention has shapes {[tuple(g.shape) for g in gates]}, not "
                    f"B x C x H x 1 and B x C x 1 x W for its {tuple(x.shape)} input"
                )
        a_h, a_w = rows[0], cols[0]
        return {"height": a_h[..., 0], "width": a_w[..., 0, :]}, [a_h, a_w]


class SelectiveKernelProbe(Probe):
    """SKNet's selective kernel: a softmax over K paths per channel, then their weighted sum.

    The ``attn`` submodule takes the stacked paths (B x K x C x H x W) and outputs the
    weights (B x K x C x 1 x 1); the module returns ``sum_k paths_k * weights_k``.
    """

    kind = "branch"
    record_type = BranchRecord

    def taps(self) -> dict[str, nn.Module]:
        return {"attn": self.module.get_submodule("attn")}

    def where(self) -> str:
        return "its submodule 'attn'"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        seen = self.pieces.get("attn", [])
        if len(seen) != 1:
            return self.missing()
        (paths,), w = seen[0]
        if paths.dim() != 5 or w.shape != (*paths.shape[:3], 1, 1):
            return Emission(problem=f"{self.name}: unexpected paths {tuple(paths.shape)}")
        sl = sample(paths)
        em = Emission(fields={"weights": w[..., 0, 0]})
        em.compare(
            "output == sum_k path_k * weights_k",
            lambda: (sl.drop(1)(output), (sl(paths) * sl(w)).sum(dim=1)),
        )
        em.check("weights sum to 1 over paths", lambda: sums_to_one(w, 1))
        if self.keep_features:
            em.fields["features"] = paths
        return em


class SplitAttentionProbe(Probe):
    """ResNeSt's split attention: a softmax over the radix groups per channel.

    ``rsoftmax`` outputs the weights (B x R*C, radix-major; a sigmoid when R = 1), ``act0``
    the R paths (B x R*C x H x W); the module returns ``sum_r paths_r * weights_r``.
    """

    kind = "branch"
    record_type = BranchRecord

    def taps(self) -> dict[str, nn.Module]:
        m = self.module
        return {"weights": m.get_submodule("rsoftmax"), "paths": m.get_submodule("act0")}

    def where(self) -> str:
        return "its submodules 'rsoftmax' and 'act0'"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        ws, xs = self.outputs("weights"), self.outputs("paths")
        if len(ws) != 1 or len(xs) != 1:
            return self.missing()
        r = int(cast(int, self.module.radix))  # a plain int attribute of the module
        x = xs[0]
        b, rc, h, w = x.shape
        paths = x.reshape(b, r, rc // r, h, w)
        weights = ws[0].reshape(b, r, rc // r)
        sl = sample(paths)
        em = Emission(fields={"weights": weights})
        factor = weights[..., None, None]
        em.compare(
            "output == sum_k path_k * weights_k",
            lambda: (sl.drop(1)(output), (sl(paths) * sl(factor)).sum(1)),
        )
        if r > 1:
            em.check("weights sum to 1 over paths", lambda: sums_to_one(weights, 1))
        else:
            em.check_range("0 <= weights <= 1", lambda: weights)
        if self.keep_features:
            em.fields["features"] = paths
        return em


class ContextProbe(Probe):
    """GCNet's global context block (timm ``GlobalContext``).

    The attention map is a softmax over positions computed in the forward (watched); the
    pooled context then drives a sigmoid channel ``gate`` (``mlp_scale``) and/or an additive
    ``mlp_add``: ``output = input * scale + shift``.
    """

    kind = "context"
    record_type = ContextRecord
    watch = frozenset({"softmax"})

    def taps(self) -> dict[str, nn.Module]:
        m, out = self.module, {}
        mlp = getattr(m, "mlp_scale", None) or getattr(m, "mlp_add", None)
        if mlp is not None:
            out["context"] = mlp
        if getattr(m, "mlp_scale", None) is not None:
            out["scale"] = m.get_submodule("gate")
        if getattr(m, "mlp_add", None) is not None:
            out["shift"] = m.get_submodule("mlp_add")
        return out

    def where(self) -> str:
        return "the softmax over positions in its forward"

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        x = _feature_map(self.name, args)
        if isinstance(x, str):
            return Emission(problem=x)
        b, c, h, w = x.shape
        maps = self.outputs("softmax")
        contexts = [args_[0] for args_, _ in self.pieces.get("context", [])]
        scales, shifts = self.outputs("scale"), self.outputs("shift")
        want_scale = getattr(self.module, "mlp_scale", None) is not None
        want_shift = getattr(self.module, "mlp_add", None) is not None
        if (
            len(maps) != 1
            or len(contexts) != 1
            or len(scales) != want_scale
            or len(shifts) != want_shift
        ):
            return self.missing()
        attn = maps[0].reshape(b, h, w)
        fields: dict[str, torch.Tensor] = {"map": attn}
        if want_scale:
            fields["scale"] = scales[0].reshape(b, c)
        if want_shift:
            fields["shift"] = shifts[0].reshape(b, c)
        sl = sample(x)

        def expected() -> torch.Tensor:
            e = sl(x) * sl(scales[0]) if want_scale else sl(x)
            return e + sl(shifts[0]) if want_shift else e

        bs, cs = sl.slices[:2]  # the sampled images and channels

        def pooled() -> torch.Tensor:
            return torch.einsum("bcp,bp->bc", x[bs, cs].flatten(2), attn[bs].flatten(1))

        em = Emission(fields=fields)
        em.compare("output == input * scale + shift", lambda: (sl(output), expected()))
        em.check("map sums to 1", lambda: sums_to_one(attn, (1, 2)))
        em.compare(
            "context == sum_p map_p input_p",
            lambda: (contexts[0].reshape(b, c)[bs, cs], pooled()),
        )
        if self.keep_features:
            em.fields["features"] = x
        return em


class SeparableContextProbe(Probe):
    """MobileViT-v2's separable self-attention (timm ``LinearSelfAttention``; Mehta and
    Rastegari, "Separable Self-attention for Mobile Vision Transformers", 2022, eq. 2-4).

    There is no query-key matrix. The block unfolds its feature map into P pixel offsets
    (i, j) of ph x pw patches and N patches; one latent query scores every patch, a softmax
    over N per offset (``context_scores``, B x 1 x P x N): the context of offset p is
    ``sum_n scores[p, n] key[:, p, n]``, and the output ``relu(value) * context``. The
    record is these scores, as a context map: laid back on the feature map, pixel
    (ny ph + i, nx pw + j) holds ``scores[i pw + j, ny nw + nx]``, so each of the P
    interleaved sub-lattices sums to one (``meta["offsets"]`` = P).
    """

    kind = "context"
    record_type = ContextRecord
    watch = frozenset({"softmax"})

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__(name, module)
        self._grid: tuple[int, int, int, int] | None = None  # nh, nw, ph, pw

    def taps(self) -> dict[str, nn.Module]:
        return {"mixed": self.module.get_submodule("out_proj")}

    def where(self) -> str:
        return "the softmax of its context scores"

    def attach(self, root: nn.Module) -> list[Any]:
        """Note the patch grid of the MobileViT-v2 block around the module in every forward
        (the module itself sees only P x N)."""
        block = next(
            (
                m
                for m in root.modules()
                if hasattr(m, "patch_size")
                and hasattr(m, "transformer")
                and any(c is self.module for c in m.modules())
            ),
            None,
        )
        if block is None:
            return []

        def note(_module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                ph, pw = (int(p) for p in cast(Any, block).patch_size)
                nh, nw = -(-int(x.shape[-2]) // ph), -(-int(x.shape[-1]) // pw)
                self._grid = (nh, nw, ph, pw)

        return [block.register_forward_pre_hook(note)]

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:
        x = args[0] if args else None
        scores, mixed = self.outputs("softmax"), self.pieces.get("mixed", [])
        if (len(args) > 1 and args[1] is not None) or kwargs.get("x_prev") is not None:
            return Emission(problem=f"{self.name}: cross-attention to another map is not recorded")
        if not isinstance(x, torch.Tensor) or len(scores) != 1 or len(mixed) != 1:
            return self.missing()
        s = scores[0]  # B x 1 x P x N
        b, _, p, n = s.shape
        if self._grid is None or self._grid[0] * self._grid[1] != n:
            return Emission(problem=f"{self.name}: its patch grid for {n} patches is unknown")
        nh, nw, ph, pw = self._grid
        laid = s.reshape(b, ph, pw, nh, nw).permute(0, 3, 1, 4, 2).reshape(b, nh * ph, nw * pw)
        m = self.module
        d = cast(int, m.embed_dim)

        def applied() -> tuple[torch.Tensor, torch.Tensor]:
            qkv = cast(nn.Module, m.qkv_proj)(x[:2])
            _, key, value = qkv.split([1, d, d], dim=1)
            context = (key * s[:2]).sum(dim=-1, keepdim=True)
            return mixed[0][0][0][:2], torch.relu(value) * context

        em = Emission(fields={"map": laid}, meta={"offsets": p, "patch": (ph, pw)})
        em.compare("relu(value) * sum_n scores_n key_n == the mixed values", applied)
        em.check("each offset's scores sum to 1", lambda: sums_to_one(s, -1))
        if self.keep_features:
            em.fields["features"] = x
        return em
