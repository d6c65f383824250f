"""Attention found by what a module computes, not by its class name.

Any module whose forward calls ``F.scaled_dot_product_attention``, or takes a ``softmax``
and multiplies values by its result (``A @ v``, ``v @ A^T``, an ``einsum`` that is a
matrix product), applies self-attention. A capture watches every forward with one
:class:`torch.overrides.TorchFunctionMode` and a stack of the modules that are running,
and turns each such kernel call into a record of the module it ran in (the innermost
module on the stack that is not one of torch's own leaves, such as ``nn.Softmax`` or
``nn.Dropout``):

- **fused** (``scaled_dot_product_attention``): the kernel never forms the matrix, so it
  is computed from the very ``q``, ``k``, ``scale`` and additive bias or mask of the call
  (relative-position biases, shift masks, RoPE-rotated q and k are all already in these
  arguments): ``softmax(q k^T * scale + mask)``, the kernel's definition. Checked:
  ``matrix @ v`` equals the kernel's output.
- **explicit**: every tensor computed from a softmax's result in the module (dropout,
  head mixing, renormalisation, transposes) is followed; the first matrix product that
  takes one of them against a tensor that is not one gives the matrix the module
  applied, exactly (the product's operand, not the softmax: CaiT's talking heads and
  ConViT's gated mix are mixed *after* the softmax). Checked: ``matrix @ values``
  equals the product the module computed; rows sum to 1 where the matrix is the
  softmax itself.

Where the tokens sit on the image is not in the kernel's arguments: that comes from
layouts (:mod:`attnviz.probes.layouts`) keyed by the module's class, which say how a
kernel's batch splits into images, windows and heads, and where each query and key
lies. Without a layout the record is exact but placed only when the tokens are the
module input's own grid.

A kernel that cannot be read (an ``einsum`` of another form, dropout in training mode,
a softmax consumed as both operands) is never dropped silently: the module is listed in
``Recording.unrecorded`` with the reason and named in a ``CaptureWarning``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..records import FactoredAttentionRecord, Geometry, Record, SelfAttentionRecord
from .base import FUNCTIONS, Emission, Probe, spots, sums_to_one
from .tokens import attention_matrix, factored_fields

__all__ = ["Frame", "KernelCall", "KernelProbe", "Tracker", "tracked"]

_SOFTMAX = FUNCTIONS["softmax"] | {torch.Tensor.softmax, torch._softmax}
_SDPA = FUNCTIONS["sdpa"]
_MATMUL = FUNCTIONS["matmul"] | {torch.Tensor.__matmul__, torch.Tensor.__rmatmul__}
_EINSUM = frozenset({torch.einsum})


def tracked(module: nn.Module) -> bool:
    """Whether a capture keeps a frame for ``module``: everything but torch's own modules
    (leaves such as ``nn.Softmax`` and ``nn.Dropout``, and containers), which never run
    an attention kernel themselves, or are registered (``nn.MultiheadAttention``), and
    but subclasses that run torch.nn's own forward (torchvision's ``Conv2dNormActivation``
    is an ``nn.Sequential``): their code only calls their children."""
    if type(module).__module__.startswith("torch.nn."):
        return False
    forward = module.__dict__.get("forward", type(module).forward)
    return not (getattr(forward, "__module__", None) or "").startswith("torch.nn.")


@dataclass
class KernelCall:
    """One attention kernel seen in a module's forward, in one canonical form.

    ``matrix`` (lead... x Q x K) times ``values`` (lead... x K x D) is ``product`` (lead...
    x Q x D), the module's own result; ``how`` says where it was read.
    """

    how: str
    matrix: torch.Tensor | None  # None: a fused kernel kept as its factors
    values: torch.Tensor
    product: torch.Tensor
    normalised: bool
    factors: dict[str, Any] | None = None  # q, k, mask, causal, scale of a fused kernel

    def rows(self, rows: Any = None) -> torch.Tensor:
        """The matrix's rows (lead... x R x K): read, or computed from the factors."""
        if self.factors is None:
            assert self.matrix is not None
            return self.matrix if rows is None else self.matrix[..., rows, :]
        f = self.factors
        return attention_matrix(f["q"], f["k"], f["mask"], f["causal"], f["scale"], rows=rows)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.factors is None:
            assert self.matrix is not None
            return tuple(self.matrix.shape)
        q, k = self.factors["q"], self.factors["k"]
        return (*q.shape[:-1], int(k.shape[-2]))


@dataclass
class Frame:
    """A running module: the kernels seen in its forward and the softmax results in it."""

    name: str
    module: nn.Module
    args: tuple
    kwargs: dict
    covered: bool  # the module (or one around it) has a registered probe or refusal
    calls: list[KernelCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # id -> (tensor, softmax dim or None, is the softmax output itself); tensors held so
    # that ids are not reused while the frame runs
    tainted: dict[int, tuple[torch.Tensor, int | None, bool]] = field(default_factory=dict)


def _flat(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out += [t for t in a if isinstance(t, torch.Tensor)]
    return out


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


class Tracker(TorchFunctionMode):
    """Sees every torch function call of a forward and hands kernels to their frame.

    Owned by a capture: it pushes and pops :class:`Frame` objects from module hooks, and
    is entered as a torch function mode while the outermost tracked module runs.
    """

    def __init__(self, *, factored: bool = False) -> None:
        super().__init__()
        self.stack: list[Frame] = []
        self.factored = factored  # keep a fused kernel's q and k, not its matrix
        self.quiet = 0  # > 0 while attnviz itself computes (records, checks): not the model

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.stack or self.quiet:
            return out
        frame = self.stack[-1]
        if func in _SDPA:
            self._sdpa(frame, args, kwargs, out)
        elif func in _SOFTMAX:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(out, torch.Tensor):
                frame.tainted[id(out)] = (out, dim if isinstance(dim, int) else None, True)
        elif any(f.tainted for f in self.stack):
            self._follow(frame, func, args, kwargs, out)
        return out

    # -- fused ------------------------------------------------------------------------------
    def _sdpa(self, frame: Frame, args: tuple, kwargs: dict, out: Any) -> None:
        def arg(i: int, name: str, default: Any = None) -> Any:
            return args[i] if len(args) > i else kwargs.get(name, default)

        q, k, v = arg(0, "query"), arg(1, "key"), arg(2, "value")
        mask, dropout, causal = arg(3, "attn_mask"), arg(4, "dropout_p", 0.0), arg(5, "is_causal")
        scale = kwargs.get("scale")
        if not all(isinstance(t, torch.Tensor) for t in (q, k, v, out)):
            return
        if float(dropout) > 0:
            frame.problems.append(
                "scaled_dot_product_attention with dropout (training mode) applies a random "
                "matrix; capture in eval mode"
            )
            return
        if kwargs.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
        how = "scaled_dot_product_attention"
        if self.factored:
            factors = {"q": q, "k": k, "mask": mask, "causal": bool(causal), "scale": scale}
            frame.calls.append(KernelCall(how, None, v, out, True, factors=factors))
        else:
            a = attention_matrix(q, k, mask, bool(causal), scale)
            frame.calls.append(KernelCall(how, a, v, out, True))

    # -- explicit ---------------------------------------------------------------------------
    def _taint_of(self, t: torch.Tensor) -> tuple[torch.Tensor, int | None, bool] | None:
        for f in reversed(self.stack):
            hit = f.tainted.get(id(t))
            if hit is not None and hit[0] is t:
                return hit
        return None

    def _follow(self, frame: Frame, func, args: tuple, kwargs: dict, out: Any) -> None:
        ins = _flat(args, kwargs)
        hits: list[tuple[int, tuple[torch.Tensor, int | None, bool]]] = []
        for i, t in enumerate(ins):
            hit = self._taint_of(t)
            if hit is not None:
                hits.append((i, hit))
        if not hits:
            return
        if func in _MATMUL and len(ins) >= 2 and isinstance(out, torch.Tensor):
            self._product(frame, ins[0], ins[1], out, hits)
            return
        if func in _EINSUM and isinstance(out, torch.Tensor):
            eq = args[0] if args and isinstance(args[0], str) else None
            if self._einsum(frame, eq, ins, out, hits):
                return
        same = [t for t in _outputs(out) if any(t is ins[i] for i, _ in hits)]
        for t in _outputs(out):
            # in place or returned as is (dropout in eval): still the softmax itself
            pure = bool(same) and t is same[0] and hits[0][1][2]
            frame.tainted[id(t)] = (t, hits[0][1][1] if pure else None, pure)

    def _product(
        self, frame: Frame, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor, hits: list
    ) -> None:
        if len(hits) > 1 or left.dim() < 2 or right.dim() < 2:
            frame.problems.append("a softmax result multiplied by another one")
            return
        i, (_, dim, pure) = hits[0]
        if i == 0:  # A @ v
            normal = pure and dim in (-1, left.dim() - 1)
            call = KernelCall("softmax, then matrix @ values", left, right, out, normal)
            frame.calls.append(call)
        else:  # v @ A^T: the matrix is the transposed right operand
            normal = pure and dim in (-2, right.dim() - 2)
            frame.calls.append(
                KernelCall(
                    "softmax, then values @ matrix^T",
                    right.transpose(-2, -1),
                    left.transpose(-2, -1),
                    out.transpose(-2, -1),
                    normal,
                )
            )

    def _einsum(
        self, frame: Frame, eq: str | None, ins: list[torch.Tensor], out: torch.Tensor, hits: list
    ) -> bool:
        """An einsum over a softmax result: a matrix product with values (a kernel call,
        True), one that keeps the matrix whole (mixing heads, say: followed on, False), or
        one that is neither (a problem, True)."""
        why = f"an einsum {eq!r} over a softmax result that is no matrix product with values"
        if eq is None or "->" not in eq or "." in eq or len(ins) != 2 or len(hits) != 1:
            frame.problems.append(why)
            return True
        lhs, o = eq.replace(" ", "").split("->")
        terms = lhs.split(",")
        i, (_, dim, pure) = hits[0]
        t, v = terms[i], terms[1 - i]
        if len(t) >= 2 and t[-2] in o and t[-1] in o:
            return False  # the matrix survives (e.g. heads mixed): a transformation of it
        a_t, v_t = ins[i], ins[1 - i]
        contracted = [c for c in t if c in v and c not in o]
        qs = [c for c in t if c in o and c not in v]
        ds = [c for c in v if c in o and c not in t]
        lead = [c for c in o if c in t and c in v]
        if len(contracted) != 1 or len(qs) != 1 or len(ds) != 1 or len(set(t)) != len(t):
            frame.problems.append(why)
            return True
        c, q, d, b = contracted[0], qs[0], ds[0], "".join(lead)
        if sorted(t) != sorted(b + q + c) or sorted(v) != sorted(b + c + d):
            frame.problems.append(why)
            return True
        a = torch.einsum(f"{t}->{b}{q}{c}", a_t)
        vv = torch.einsum(f"{v}->{b}{c}{d}", v_t)
        prod = torch.einsum(f"{o}->{b}{q}{d}", out)
        normal = pure and dim is not None and t[dim] == c
        frame.calls.append(KernelCall(f"softmax, then einsum {eq!r}", a, vv, prod, normal))
        return True


class KernelProbe(Probe):
    """The record-making half of a kernel found at run time (see the module docstring).

    Made by the capture for a module the first time a kernel is seen in it; turns each
    :class:`KernelCall` into record fields, the kernel's metadata, the tokens' geometry
    and checks.
    """

    kind = "self"
    record_type = SelfAttentionRecord

    def emission(self, call: KernelCall, batch: int | None, layout: Any) -> Emission:
        shape = call.shape
        lead_shape, (q, k) = shape[:-2], shape[-2:]
        v, p = call.values, call.product
        if tuple(v.shape[:-2]) != lead_shape:
            try:
                v = v.expand(*lead_shape, *v.shape[-2:])
            except RuntimeError:
                return Emission(problem=f"{self.name}: a kernel whose values do not line up")
        lead = int(math.prod(lead_shape))
        placed = layout(lead_shape, q, k) if layout is not None else None
        record_type: type[Record] = SelfAttentionRecord
        meta: dict[str, Any] = {}
        if call.factors is not None and (placed is None or placed.query_pos is None):
            fields, meta, geometry = self._factors(call, v, placed, batch, lead)
            record_type = FactoredAttentionRecord
        else:
            a = call.rows()  # windows: small matrices, kept whole
            if placed is not None:
                fields, geometry, record_type = placed.fields(a, v)
            else:
                b = batch if batch and lead % batch == 0 else lead
                fields = {
                    "matrix": a.reshape(b, lead // b, q, k),
                    "values": v.reshape(b, lead // b, k, v.shape[-1]),
                }
                geometry = self._unplaced()
        meta["kernel"] = call.how
        meta["kernel_shape"] = shape
        em = Emission(fields=fields, meta=meta, geometry=geometry, record_type=record_type)
        rows = list(range(q))[spots(q, 16)]
        imgs = slice(None, None, max(1, lead // 64))  # images, windows and heads: about 64

        @functools.cache  # both checks read the same rows: computed once
        def sampled() -> torch.Tensor:
            return call.rows(rows).reshape(lead, len(rows), k)[imgs]

        v3, p3 = v.reshape(lead, k, -1), p.reshape(lead, q, -1)
        em.compare(
            "matrix @ values == the module's own product",
            lambda: (p3[imgs, rows], sampled().to(v3.dtype) @ v3[imgs]),
        )
        if call.normalised:
            em.check("rows sum to 1", lambda: sums_to_one(sampled(), -1))
        return em

    def _unplaced(self) -> Geometry:
        """The geometry of a kernel no layout places: its reason, said by the record's grid
        methods."""
        what = type(self.module).__name__
        return Geometry(
            unplaced=f"attnviz knows no layout for {what} that places its tokens on the image"
        )

    def _factors(
        self, call: KernelCall, v: torch.Tensor, placed: Any, batch: int | None, lead: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], Geometry]:
        """Record fields, metadata and geometry of a fused kernel kept as its factors (a
        global or unplaced kernel; windows keep their small matrices)."""
        f = cast(dict, call.factors)
        if placed is not None:
            b, h = placed.images, placed.heads
            geometry = placed.geometry(f["q"].shape[-2])
        else:
            b = batch if batch and lead % batch == 0 else lead
            h = lead // b
            geometry = self._unplaced()
        fields, meta = factored_fields(
            f["q"],
            f["k"],
            v,
            f["mask"],
            scale=f["scale"],
            causal=f["causal"],
            how=call.how,
            images=b,
            heads=h,
        )
        return fields, meta, geometry

    def end(self, args: tuple, kwargs: dict, output: Any) -> Emission:  # not hook-driven
        raise NotImplementedError


def first_image(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The first 4-D tensor among a forward's arguments (its images), if any."""
    for t in (*args, *kwargs.values()):
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            return t
    return None


__all__ += ["first_image"]
