"""Record the attention that a model applies, with forward hooks that always come off.

    with attnviz.capture(model) as rec:
        model(x)
    rec["layer4.1.cbam.spatial_gate"].map      # B x H x W, what the network multiplied by

Records are detached copies (on CPU by default), keyed by the module's
qualified name, in the order the modules ran. Several forward passes inside one
``with`` concatenate along the batch.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .registry import KINDS, AttentionSpec, find_attention_modules, registered

__all__ = [
    "ChannelRecord",
    "Record",
    "Recording",
    "SelfAttentionRecord",
    "SpatialRecord",
    "TransformRecord",
    "capture",
]


class Record:
    """What one attention module applied, over every forward pass of a capture.

    Attributes:
        name: the module's qualified name in the model.
        module_type: the class name of the module.
        kind: ``"channel"``, ``"spatial"``, ``"transform"`` or ``"self"``.
    """

    kind: ClassVar[str] = ""
    _main: ClassVar[str] = ""

    def __init__(self, name: str, module_type: str) -> None:
        self.name = name
        self.module_type = module_type
        self._parts: dict[str, list[torch.Tensor]] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self.meta: dict[str, Any] = {}

    def _append(self, field: str, tensor: torch.Tensor) -> None:
        self._parts.setdefault(field, []).append(tensor)
        self._cache.pop(field, None)

    def _get(self, field: str) -> torch.Tensor:
        if field not in self._cache:
            parts = self._parts.get(field)
            if not parts:
                raise AttributeError(f"{self.name}: no {field!r} was recorded")
            shapes = {tuple(p.shape[1:]) for p in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"{self.name}: forward passes inside one capture gave {field} of different "
                    f"shapes {sorted(shapes)}; use one capture per input size"
                )
            self._cache[field] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._cache[field]

    @property
    def data(self) -> torch.Tensor:
        """The attention tensor itself (weights, map, theta or matrix)."""
        return self._get(self._main)

    @property
    def features(self) -> torch.Tensor:
        """The module's input (B x C x H x W), what the attention was applied to.

        Recorded only by ``capture(..., features=True)``; for channel attention the module's
        output is ``features * weights``, for spatial attention ``features * map``.
        """
        if "features" not in self._parts:
            raise AttributeError(
                f"{self.name}: no features recorded; use capture(..., features=True)"
            )
        return self._get("features")

    @property
    def batch_size(self) -> int:
        return sum(p.shape[0] for p in self._parts.get(self._main, []))

    @property
    def calls(self) -> int:
        """How many times the module ran during the capture."""
        return len(self._parts.get(self._main, []))

    def __repr__(self) -> str:
        shape = tuple(self.data.shape) if self._parts else ()
        return f"{type(self).__name__}(name={self.name!r}, type={self.module_type}, shape={shape})"


class ChannelRecord(Record):
    """Channel weights (SE's s, CBAM's Mc): ``weights`` is B x C."""

    kind = "channel"
    _main = "weights"

    @property
    def weights(self) -> torch.Tensor:
        return self._get("weights")


class SpatialRecord(Record):
    """A spatial map (CBAM's Ms): ``map`` is B x H x W."""

    kind = "spatial"
    _main = "map"

    @property
    def map(self) -> torch.Tensor:
        return self._get("map")


class TransformRecord(Record):
    """A spatial transformer's A_theta (B x 2 x 3), its output V and the input's H x W."""

    kind = "transform"
    _main = "theta"

    @property
    def theta(self) -> torch.Tensor:
        return self._get("theta")

    @property
    def output(self) -> torch.Tensor:
        """V, the transformed output (B x C x H' x W')."""
        return self._get("output")

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the image that was sampled."""
        return self.meta["input_size"]

    @property
    def align_corners(self) -> bool:
        return self.meta.get("align_corners", False)

    def grid(self) -> torch.Tensor:
        """The sampling grid (B x H' x W' x 2, normalised [-1, 1]) that produced ``output``."""
        out = self.output
        return F.affine_grid(self.theta.float(), list(out.shape), align_corners=self.align_corners)


class SelfAttentionRecord(Record):
    """A self-attention matrix (B x Q x K, rows sum to one) and its query/key grids.

    Row q of ``matrix`` is where query position q looks: one weight per key position.
    Positions are row-major on their grids, ``query_size`` (Hq, Wq) and ``key_size``
    (Hk, Wk), which a module states by setting attributes of those names in its forward
    (:class:`attnviz.modules.NonLocal` does); otherwise square grids are assumed. A module
    with a ``values`` submodule that outputs the values (B x K x D) has them recorded too.
    """

    kind = "self"
    _main = "matrix"

    @property
    def matrix(self) -> torch.Tensor:
        return self._get("matrix")

    @property
    def values(self) -> torch.Tensor:
        """What the matrix averages (B x K x D): ``matrix @ values`` is the module's y."""
        return self._get("values")

    @property
    def query_size(self) -> tuple[int, int]:
        """(Hq, Wq): the grid of the queries, the rows of ``matrix``."""
        return self._grid("query_size", 1)

    @property
    def key_size(self) -> tuple[int, int]:
        """(Hk, Wk): the grid of the keys, the columns of ``matrix``."""
        return self._grid("key_size", 2)

    def _grid(self, key: str, dim: int) -> tuple[int, int]:
        n = self.matrix.shape[dim]
        size = self.meta.get(key)
        if size is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"{self.name}: {n} positions are no square grid and the module did not "
                    f"state its {key}; set self.{key} = (H, W) in its forward"
                )
            size = (side, side)
        if size[0] * size[1] != n:
            raise ValueError(f"{self.name}: {key} {size} does not fit {n} positions")
        return size

    def query_cell(self, query_xy: Sequence[float], image_size: Sequence[int]) -> tuple[int, int]:
        """The query cell (i, j) under image pixel (x, y): (floor(y Hq / H), floor(x Wq / W)).

        Raises:
            ValueError: a bad ``image_size``, or (x, y) outside the image.
        """
        h, w = _image_size(image_size)
        x, y = (float(v) for v in query_xy)
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"query_xy must lie in the {w} x {h} image, got ({x:g}, {y:g})")
        hq, wq = self.query_size
        return min(math.floor(y * hq / h), hq - 1), min(math.floor(x * wq / w), wq - 1)

    def query_map(self, query_xy: Sequence[float], image_size: Sequence[int]) -> torch.Tensor:
        """Where the query under image pixel (x, y) looks, as a map over the image.

        The row of the query cell (:meth:`query_cell`), laid out on the key grid and
        upsampled bilinearly (``align_corners=False``) to ``image_size``.

        Args:
            query_xy: (x, y) in pixels of the image, 0 <= x < W, 0 <= y < H.
            image_size: (H, W) of the image.

        Returns:
            (B, H, W) float32 tensor.
        """
        i, j = self.query_cell(query_xy, image_size)
        hk, wk = self.key_size
        row = self.matrix[:, i * self.query_size[1] + j].float().reshape(-1, 1, hk, wk)
        size = _image_size(image_size)
        return F.interpolate(row, size=size, mode="bilinear", align_corners=False)[:, 0]

    def received(self) -> torch.Tensor:
        """Attention each key receives, averaged over all queries: (B, Hk, Wk) float32."""
        return self.matrix.float().mean(dim=1).reshape(-1, *self.key_size)


def _image_size(size: Sequence[int]) -> tuple[int, int]:
    out = tuple(int(s) for s in size)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"image_size must be (H, W) of positive ints, got {size!r}")
    return out


_RECORD_TYPES: dict[str, type[Record]] = {
    r.kind: r for r in (ChannelRecord, SpatialRecord, TransformRecord, SelfAttentionRecord)
}


class Recording(Mapping[str, Record]):
    """The records of one capture, keyed by qualified module name, in forward order."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}

    def __getitem__(self, name: str) -> Record:
        try:
            return self._records[name]
        except KeyError:
            raise KeyError(
                f"no record named {name!r}; recorded: {list(self._records) or 'nothing yet'}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def select(self, kind: str | None = None, name: str | None = None) -> list[Record]:
        """Records of one kind and/or whose name matches a glob pattern, in forward order.

        Raises:
            ValueError: unknown kind, or nothing matches (the message lists the names).
        """
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        out = [
            r
            for n, r in self._records.items()
            if (kind is None or r.kind == kind) and (name is None or fnmatch.fnmatchcase(n, name))
        ]
        if not out:
            raise ValueError(
                f"no record matches kind={kind!r}, name={name!r}; recorded: "
                f"{[(n, r.kind) for n, r in self._records.items()]}"
            )
        return out

    def __repr__(self) -> str:
        lines = [f"  {r!r}" for r in self._records.values()]
        return "Recording(\n" + "\n".join(lines) + "\n)" if lines else "Recording()"


def _as_patterns(names: str | Sequence[str] | None) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    return list(names)


class capture:  # lower case: used like a function, ``with attnviz.capture(model) as rec``
    """Context manager that records every recognised attention module of ``model``.

    Args:
        model: any ``nn.Module``.
        kinds: record only these kinds (``"channel"``, ``"spatial"``, ``"transform"``, ``"self"``).
        names: glob pattern(s) over qualified module names, e.g. ``"layer4.*"``.
        device: where records are stored (``"cpu"``); ``None`` keeps the model's device.
        dtype: store records in this floating dtype (e.g. ``torch.float16``); ``None`` keeps it.
        eval: put the model in eval mode inside the ``with`` (maps differ between train and
            eval); every module's flag is restored on exit.
        features: also keep each channel/spatial/self-attention module's input feature map
            (``record.features``), e.g. to show a channel before and after scaling. Costs
            memory: B x C x H x W per module.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``dtype`` is not floating.
        ValueError: no recognised attention module, an unknown kind, or a pattern that
            matches nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kinds: str | Iterable[str] | None = None,
        names: str | Sequence[str] | None = None,
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype | None = None,
        eval: bool = True,
        features: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(
                f"dtype must be a floating torch.dtype such as torch.float16, got {dtype!r}"
            )
        self.model = model
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.eval = eval
        self.features = features
        self.targets = self._select(model, kinds, _as_patterns(names))
        self._handles: list[Any] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        self.recording: Recording | None = None

    @staticmethod
    def _select(model, kinds, patterns) -> list[tuple[str, nn.Module, AttentionSpec]]:
        found = list(find_attention_modules(model))
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no recognised attention module. attnviz recognises "
                f"{sorted(registered())}; teach it another type with "
                "attnviz.register(ModuleType, kind='channel', submodule='gate')."
            )
        if kinds is not None:
            kinds = {kinds} if isinstance(kinds, str) else set(kinds)
            bad = kinds - set(KINDS)
            if bad:
                raise ValueError(f"unknown kind(s) {sorted(bad)}; kinds are {KINDS}")
            found = [t for t in found if t[2].kind in kinds]
            if not found:
                raise ValueError(
                    f"{type(model).__name__} has no attention module of kind {sorted(kinds)}"
                )
        if patterns is not None:
            available = [n for n, _, _ in found]
            for p in patterns:
                if not any(fnmatch.fnmatchcase(n, p) for n in available):
                    raise ValueError(
                        f"name pattern {p!r} matches no attention module; available: {available}"
                    )
            found = [t for t in found if any(fnmatch.fnmatchcase(t[0], p) for p in patterns)]
        return found

    # -- hooks ---------------------------------------------------------------------------
    def _store(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach()
        out = out.to(device=self.device or out.device, dtype=self.dtype or out.dtype)
        if out.data_ptr() == t.data_ptr():
            out = out.clone()
        return out

    def _record(self, name: str, module: nn.Module, kind: str) -> Record:
        rec = self.recording
        if name not in rec._records:
            rec._records[name] = _RECORD_TYPES[kind](name, type(module).__name__)
        return rec._records[name]

    def _attention_hook(self, name: str, parent: nn.Module, kind: str):
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            r = self._record(name, parent, kind)
            b = output.shape[0]
            if kind == "channel":
                if output.dim() not in (2, 4) or output[0].numel() != output.shape[1]:
                    raise ValueError(
                        f"{name}: a channel attention must output B x C or B x C x 1 x 1, "
                        f"got {tuple(output.shape)}; check its registry entry"
                    )
                r._append("weights", self._store(output.reshape(b, -1)))
            elif kind == "spatial":
                if output.dim() == 4 and output.shape[1] == 1:
                    output = output[:, 0]
                if output.dim() != 3:
                    raise ValueError(
                        f"{name}: a spatial attention must output B x 1 x H x W or B x H x W, "
                        f"got {tuple(output.shape)}; check its registry entry"
                    )
                r._append("map", self._store(output))
            elif kind == "transform":
                r._append("theta", self._store(output))
                r.meta.setdefault("align_corners", getattr(parent, "align_corners", False))
            else:
                r._append("matrix", self._store(output))
                for key in ("query_size", "key_size"):
                    if getattr(parent, key, None) is not None:
                        r.meta[key] = tuple(int(s) for s in getattr(parent, key))

        return hook

    def _values_hook(self, name: str, parent: nn.Module):
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            self._record(name, parent, "self")._append("values", self._store(output))

        return hook

    def _transform_output_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            r = self._record(name, module, "transform")
            src = kwargs.get("source")
            if src is None:
                src = args[1] if len(args) > 1 and args[1] is not None else args[0]
            r.meta["input_size"] = tuple(src.shape[-2:])
            r._append("output", self._store(output))

        return hook

    def _features_hook(self, name: str, kind: str):
        def hook(module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
            self._record(name, module, kind)._append("features", self._store(args[0]))

        return hook

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> Recording:
        if self._handles:
            raise RuntimeError("this capture is active already; it cannot be entered twice")
        self.recording = Recording()
        try:
            for name, module, spec in self.targets:
                target = module.get_submodule(spec.submodule) if spec.submodule else module
                self._handles.append(
                    target.register_forward_hook(self._attention_hook(name, module, spec.kind))
                )
                if spec.kind == "transform":
                    self._handles.append(
                        module.register_forward_hook(
                            self._transform_output_hook(name), with_kwargs=True
                        )
                    )
                elif self.features:
                    hook = self._features_hook(name, spec.kind)
                    self._handles.append(module.register_forward_hook(hook))
                if spec.kind == "self" and isinstance(getattr(module, "values", None), nn.Module):
                    hook = self._values_hook(name, module)
                    self._handles.append(module.values.register_forward_hook(hook))
            if self.eval:
                self._modes = [(m, m.training) for m in self.model.modules()]
                self.model.eval()
        except BaseException:
            self.remove()
            raise
        return self.recording

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and restore train/eval flags; safe to call twice."""
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            for m, training in self._modes:
                m.training = training
            self._modes = []
