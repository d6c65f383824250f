"""Record the attention that a model applies, with hooks that always come off.

    with attnviz.capture(model) as rec:
        model(x)
    rec["layer4.1.cbam.spatial_gate"].map      # B x H x W, what the network multiplied by

Records are detached copies (on CPU by default), keyed by the module's qualified name, in
the order the modules ran. Several forward passes inside one ``with`` concatenate along
the batch.

How it reads a module: a :class:`attnviz.probes.Probe` per recognised module sees the
module's input and output (forward hooks), the outputs of the submodules that compute its
attention, and, for attention computed by a function inside ``forward``, that function's
result (a torch function mode active only while the module runs). Every record is checked
as it is taken: the module's real output must equal its input combined with the recorded
attention (``input * weights`` for SE, the weighted sum of paths for SKNet,
``matrix @ values`` for self-attention, ...), on a strided sample of positions, with no
second forward pass. A disagreement beyond floating-point tolerance is a warning naming the
module and the error (an error with ``verify="raise"``); ``Recording.checks`` keeps every
result.

Rules worth knowing:

- **Threads**: a capture records only the forward passes run by the thread that entered
  it. Two threads capturing one model at once each get exactly their own records. The
  train/eval flags are shared by all threads, though (they live on the modules): with
  ``eval=True`` the model is in eval mode for every thread while any capture of it is
  open, and the flags come back when the last one closes. Put a shared model in eval mode
  yourself (or pass ``eval=False``) if other threads must not see it switch.
- **Compiled models**: a ``torch.compile``d model (or one with compiled submodules) runs
  eagerly inside the capture (``torch.compiler.set_stance("force_eager")``, process-wide
  while the capture is open), so the hooks see every module; records equal the eager
  model's. Without ``set_stance`` (torch < 2.6) capture refuses a compiled model and says
  how to capture its eager module.
- **Fused attention is kept as its factors** (``attention="factors"``, the default): a
  ``scaled_dot_product_attention`` (timm's ViTs, Hugging Face's ``sdpa``) and a plain
  ``nn.MultiheadAttention`` call (torchvision's ViT: no masks) run as they are, and the
  record keeps their q, k (from the kernel's arguments, or the module's own input
  projection), values, mask and scale; rows and maps are computed from them when asked,
  and checked against the module's output on sampled rows. With ``attention="full"``
  (or masks on a ``MultiheadAttention`` call) the whole matrices are kept:
  ``nn.MultiheadAttention`` is then called with ``need_weights=True,
  average_attn_weights=False`` and the caller still receives what it asked for.
- **Refused modules** (e.g. timm's LambdaLayer, which has no attention map) are listed in
  ``Recording.refused`` with the reason and never recorded.
- **Calls, not images**: every call of a module is recorded, and its rows are appended
  along the batch. A module called twice in one forward pass (shared weights, a loop)
  gives two calls per forward: ``record.calls`` counts them against
  ``Recording.forwards`` and ``record.per_call()`` splits them again. The recomputation
  of ``torch.utils.checkpoint`` during a backward pass is not recorded (it repeats
  images already recorded).
"""

from __future__ import annotations

import fnmatch
import math
import threading
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ._compat import renamed_kwargs
from .probes import Probe, Refusal
from .probes.base import Emission, Watch
from .probes.kernels import Frame, KernelProbe, Tracker, first_image, tracked
from .probes.layouts import Scene, layout_for
from .probes.scan import method_table, starts_no_kernel
from .probes.tokens import token_layout
from .records import KINDS, Check, Recording
from .registry import find_attention_modules, list_attention_types

__all__ = [
    "ATTENTION_MODES",
    "AllRefusedError",
    "CaptureError",
    "CaptureWarning",
    "FaithfulnessError",
    "NoAttentionError",
    "NoSuchBlockError",
    "capture",
]

#: what a capture keeps of self-attention computed by a fused kernel (``attention=``)
ATTENTION_MODES = {
    "factors": "q, k, values and the kernel's mask and scale, O(N d) per head; rows, "
    "maps and the whole matrix computed exactly when asked (the default: thousands of "
    "tokens fit)",
    "full": "every matrix, O(N^2) per head, computed during the forward",
}

#: relative error above which a faithfulness check fails, by the output's dtype
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


class CaptureWarning(UserWarning):
    """A capture could not record something faithfully (the message says what and why)."""


class CaptureError(ValueError):
    """A capture that cannot record what was asked (the message says why and what to do).

    A ``ValueError``, so ``except ValueError`` keeps working; tools that sort models by
    outcome (:mod:`attnviz.coverage`) test the subclass, never the message."""


class NoAttentionError(CaptureError):
    """The model has no attention attnviz can see (no registered module and nothing that
    could run a kernel), none of the chosen kinds, or applied none in the forward pass."""


class AllRefusedError(NoAttentionError):
    """Every selected attention module is refused by design (``Recording.refused`` says
    why, e.g. timm's LambdaLayer has no attention map)."""

    def __init__(self, message: str, refused: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.refused = dict(refused or {})


class NoSuchBlockError(CaptureError):
    """A ``blocks=`` pattern matches no attention module, or ``kinds=`` names no kind."""


class FaithfulnessError(CaptureError):
    """With ``verify="raise"``: a record disagrees with what its module computed."""


def _all_refused(refused: dict[str, str]) -> AllRefusedError:
    why = "; ".join(f"{n}: {r}" for n, r in refused.items())
    return AllRefusedError(f"nothing to record: every selected module is refused. {why}", refused)


# -- state shared by every capture in the process ------------------------------------------
_LOCK = threading.Lock()


@dataclass
class _Held:
    """A module whose train/eval flag open captures have changed."""

    module: nn.Module
    captures: int  # open captures holding it
    training: bool  # its flag before the first of them


@dataclass
class _Eager:
    """``torch.compiler.set_stance("force_eager")`` while any capture needs it."""

    captures: int
    stance: Any  # the set_stance object, exited by the last capture


_EVAL: dict[int, _Held] = {}  # id(module) -> who holds it
_EAGER: list[_Eager] = []  # empty, or the one stance in force


def _eval_enter(root: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """Save the flag of every module in training mode or held by another capture (the first
    capture to change a module saves it), then ``root.eval()``. Returns the modules held."""
    with _LOCK:
        held = [m for m in modules if m.training or id(m) in _EVAL]
        for m in held:
            entry = _EVAL.get(id(m))
            if entry is None:
                _EVAL[id(m)] = _Held(m, 1, m.training)
            else:
                entry.captures += 1
        if any(m.training for m in held):
            root.eval()  # through train(False), so modules that override train() are obeyed
    return held


def _eval_exit(modules: list[nn.Module]) -> None:
    """The last capture of a module to close puts its flag back."""
    with _LOCK:
        for m in modules:
            entry = _EVAL.get(id(m))
            if entry is None or entry.module is not m:
                continue
            entry.captures -= 1
            if entry.captures == 0:
                if m.training != entry.training:
                    m.training = entry.training
                del _EVAL[id(m)]


def _eager_root(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) runs, or ``model``."""
    root = model
    while type(root).__name__ == "OptimizedModule" and isinstance(
        getattr(root, "_orig_mod", None), nn.Module
    ):
        root = cast(nn.Module, root._orig_mod)  # checked to be a module just above
    return root


#: the frames :func:`_quiet_frames` found for a model, kept while its modules are the same
_QUIET: weakref.WeakKeyDictionary[nn.Module, tuple[Any, frozenset[int]]] = (
    weakref.WeakKeyDictionary()
)


def _quiet_frames(
    model: nn.Module,
    modules: list[nn.Module],
    tracked_: list[tuple[str, nn.Module]],
    covered: set[int],
) -> frozenset[int]:
    """The ids of the tracked, unregistered modules whose own code surely starts no
    attention kernel (:func:`attnviz.probes.scan.starts_no_kernel`). Read once per model
    and kept while the model holds the same module objects, and its frames the same
    callable attributes (a module swapped, or a forward or function patched on one, is
    read again)."""
    frames = {id(m) for _, m in tracked_}
    key = tuple(
        (id(m), type(m))
        + (tuple(id(v) for v in m.__dict__.values() if callable(v)) if id(m) in frames else ())
        for m in modules  # model.modules(), walked once by the capture
    )
    with _LOCK:
        hit = _QUIET.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    methods = method_table(modules)
    quiet = frozenset(
        id(m)
        for _, m in tracked_
        if id(m) not in covered and starts_no_kernel(m, lambda c: id(c) in frames, methods)
    )
    with _LOCK:
        _QUIET[model] = (key, quiet)
    return quiet


def _eager_enter() -> None:
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:
        raise RuntimeError(
            "capture cannot see inside a torch.compile'd model with this torch "
            f"({torch.__version__}; torch.compiler.set_stance needs 2.6 or newer): capture "
            "the eager module instead, attnviz.capture(model._orig_mod), and call it"
        )
    with _LOCK:
        if not _EAGER:
            _EAGER.append(_Eager(1, set_stance("force_eager")))
        else:
            _EAGER[0].captures += 1


def _eager_exit() -> None:
    with _LOCK:
        if not _EAGER:
            return
        _EAGER[0].captures -= 1
        if _EAGER[0].captures == 0:
            _EAGER.pop().stance.__exit__(None, None, None)


def _worst(checks: list[tuple[list[torch.Tensor], str, float, float]]) -> torch.Tensor:
    """The worst error of each check over what it measured in each call, in one pass.

    Per call a check kept a 2-vector: ``relative`` or ``product`` [max |a - e|, max |e|]
    (error: their ratio, 0 where both are 0), ``range`` [min, max] (error: how far they leave
    [low, high]); or one number: an ``absolute`` error, or an already reduced worst.

    Returns:
        float64 CPU tensor, one worst error per check.
    """
    pairs, singles, owner_p, owner_s, lows, highs, modes = [], [], [], [], [], [], []
    for i, (values, mode, low, high) in enumerate(checks):
        for v in values:
            if v.numel() == 2:
                pairs.append(v)
                owner_p.append(i)
                lows.append(low)
                highs.append(high)
                modes.append(mode == "range")
            else:
                singles.append(v.reshape(1))
                owner_s.append(i)
    worst = torch.zeros(len(checks), dtype=torch.float64)
    if pairs:
        v = torch.stack([p.to(pairs[0].device) for p in pairs]).double().cpu()
        ratio = torch.where(v[:, 0] == 0, torch.zeros(()), v[:, 0] / v[:, 1])
        low_t, high_t = (
            torch.tensor(lows, dtype=torch.float64),
            torch.tensor(highs, dtype=torch.float64),
        )
        leave = torch.clamp(torch.maximum(low_t - v[:, 0], v[:, 1] - high_t), min=0)
        err = torch.where(torch.tensor(modes), leave, ratio)
        worst.scatter_reduce_(0, torch.tensor(owner_p), err, reduce="amax")
    if singles:
        v = torch.cat([s.to(singles[0].device) for s in singles]).double().cpu()
        worst.scatter_reduce_(0, torch.tensor(owner_s), v, reduce="amax")
    return worst


def _in_backward() -> bool:
    """Whether autograd is running a backward pass in this thread (where
    ``torch.utils.checkpoint`` recomputes the forward of a checkpointed segment)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _as_patterns(blocks: str | Sequence[str] | None) -> list[str] | None:
    if blocks is None:
        return None
    if isinstance(blocks, str):
        return [blocks]
    return list(blocks)


class capture:  # lower case: used like a function, ``with attnviz.capture(model) as rec``
    """Context manager that records every recognised attention module of ``model``.

    Args:
        model: any ``nn.Module`` (``torch.compile``d ones too).
        kinds: record only these kinds (see :data:`attnviz.KINDS`).
        blocks: glob pattern(s) over qualified module names, e.g. ``"layer4.*"``.
        records_on: the device records are stored on (``"cpu"``); ``None`` keeps the
            device the attention was computed on.
        dtype: store records in this floating dtype (e.g. ``torch.float16``); ``None`` keeps it.
        eval: put the model in eval mode inside the ``with`` (maps differ between train and
            eval); every module's flag is restored when the last capture of it closes.
        features: also keep what each attention was applied to (``record.features``), e.g.
            to show a channel before and after scaling. Costs memory: B x C x H x W per module.
        attention: what to keep of attention computed by a fused
            ``scaled_dot_product_attention`` (timm's ViTs, EVA, BEiT, Hugging Face's
            ``sdpa``, ...): ``"factors"`` (default) keeps the kernel's q, k, mask and scale,
            O(N d) per head, and records compute rows, maps and the whole matrix exactly
            when asked (:class:`~attnviz.FactoredAttentionRecord`); ``"full"`` computes
            and keeps every N x N matrix during the forward. Attention a module forms
            itself (an explicit softmax) is kept as it was applied either way.
        verify: check every record against its module's output as it is taken (default):
            a disagreement warns with :class:`CaptureWarning`; ``"raise"`` makes it a
            :class:`FaithfulnessError`; ``False`` skips the checks.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``dtype`` is not floating, or a bad
            ``verify``.
        ValueError: no recognised attention module, an unknown kind, a pattern that
            matches nothing, or only refused modules selected (the reason is given).
    """

    @renamed_kwargs(names="blocks", device="records_on")
    def __init__(
        self,
        model: nn.Module,
        *,
        kinds: str | Iterable[str] | None = None,
        blocks: str | Sequence[str] | None = None,
        records_on: str | torch.device | None = "cpu",
        dtype: torch.dtype | None = None,
        eval: bool = True,
        features: bool = False,
        verify: bool | str = True,
        attention: str = "factors",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(
                f"dtype must be a floating torch.dtype such as torch.float16, got {dtype!r}"
            )
        if verify not in (True, False, "raise"):
            raise TypeError(f"verify must be True, False or 'raise', got {verify!r}")
        if attention not in ATTENTION_MODES:
            raise ValueError(
                f"attention must be one of {sorted(ATTENTION_MODES)}, got {attention!r}: "
                + "; ".join(f"{k!r}: {v}" for k, v in ATTENTION_MODES.items())
            )
        self.attention = attention
        self.model = model
        self.root = _eager_root(model)
        named = list(self.root.named_modules())
        self._modules = [m for _, m in named]
        self.compiled = self.root is not model or any(
            getattr(m, "_compiled_call_impl", None) is not None for m in self._modules
        )
        self.records_on = torch.device(records_on) if records_on is not None else None
        self.dtype = dtype
        self.eval = eval
        self.features = features
        self.verify = verify
        self.probes, self.refused = self._select(named, kinds, _as_patterns(blocks))
        self._handles: list[Any] = []
        self._eval_modules: list[nn.Module] = []
        self._eager = False
        self._thread: int | None = None
        self._active: dict[int, Watch | None] = {}
        self._errors: dict[tuple[str, str], list[Any]] = {}
        self._patterns = _as_patterns(blocks)
        self._tracker = Tracker(factored=attention == "factors")
        self._mode_on = False
        self._kernel_probes: dict[str, KernelProbe] = {}
        self._scene: dict[str, Any] = {}
        self.recording: Recording | None = None

    def _select(self, named, kinds, patterns) -> tuple[list[Probe], list[Refusal]]:
        found = list(find_attention_modules(named))
        model = self.root
        self._covered = {id(m) for _, m, _ in found}
        roots = [n for n, _, _ in found]
        # frames: every module that could run a kernel, outside the registered modules
        # (whose own frames mark what runs inside them as covered)
        self._tracked = [
            (n, m)
            for n, m in named
            if id(m) in self._covered
            or (tracked(m) and not any(n.startswith(r + ".") for r in roots if r))
        ]
        open_ = [n for n, m in self._tracked if id(m) not in self._covered]
        # frames whose own code starts no kernel: no mode while they run (probes.scan)
        self._quiet_frames = _quiet_frames(model, self._modules, self._tracked, self._covered)
        if not found and not open_:
            raise NoAttentionError(
                f"{type(model).__name__} has no recognised attention module and no module "
                "that could compute one (it is built of torch.nn's own layers only). attnviz "
                f"recognises {len(list_attention_types())} module types "
                "(attnviz.list_attention_types() lists them) and any module that calls "
                "scaled_dot_product_attention or multiplies values by a softmax; teach it "
                "another with attnviz.register_attention_type(ModuleType, kind='channel', "
                "submodule='gate')."
            )
        if patterns is not None:
            available = [n for n, _, _ in found]
            names = [n for n, _ in self._tracked]
            for p in patterns:
                if not any(fnmatch.fnmatchcase(n, p) for n in available + names):
                    raise NoSuchBlockError(
                        f"block pattern {p!r} matches no attention module (nor any module "
                        f"that could run one); available: {available or names[:20]}"
                    )
            found = [t for t in found if any(fnmatch.fnmatchcase(t[0], p) for p in patterns)]
        made = [spec.make(name, module) for name, module, spec in found]
        probes = [p for p in made if isinstance(p, Probe)]
        refused = [p for p in made if isinstance(p, Refusal)]
        self._generic = any(
            patterns is None or any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in open_
        )
        if kinds is not None:
            kinds = {kinds} if isinstance(kinds, str) else set(kinds)
            bad = kinds - set(KINDS)
            if bad:
                raise NoSuchBlockError(f"unknown kind(s) {sorted(bad)}; kinds are {KINDS}")
            probes = [p for p in probes if p.kind in kinds]
            self._generic = self._generic and "self" in kinds
            if not probes and not self._generic:
                raise NoAttentionError(
                    f"{type(model).__name__} has no attention module of kind {sorted(kinds)}"
                )
        self._kinds = kinds
        if not probes and not self._generic:
            raise _all_refused({f"{r.name} ({r.module_type})": r.reason for r in refused})
        return probes, refused

    # -- hooks ---------------------------------------------------------------------------
    def _mine(self) -> bool:
        """A forward pass this capture records: in its thread, and not a recomputation that
        activation checkpointing runs during a backward pass (the same images again)."""
        return threading.get_ident() == self._thread and not _in_backward()

    def _store(self, t: torch.Tensor) -> torch.Tensor:
        """A detached copy, on ``device`` in ``dtype``: never the live tensor's storage."""
        device, dtype = self.records_on or t.device, self.dtype or t.dtype
        if device == t.device and dtype == t.dtype:
            return (t.detach() if t.requires_grad else t).clone()
        out = t.detach().to(device=device, dtype=dtype)
        return out.clone() if out.data_ptr() == t.data_ptr() else out

    def _count_forward(self, _module: nn.Module, _args: tuple) -> None:
        if self._mine():
            assert self.recording is not None  # hooks exist only inside the ``with``
            self.recording.forwards += 1

    def _begin(self, probe: Probe):
        rewrite = getattr(probe, "arguments", None)

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if not self._mine():
                return None
            probe.begin()
            watch = None
            if probe.watch:
                watch = Watch(probe)
                watch.__enter__()
            self._active[id(probe)] = watch
            # a probe may ask the module for its attention (nn.MultiheadAttention's weights)
            return rewrite(args, kwargs) if rewrite is not None else None

        return hook

    def _tap(self, probe: Probe, key: str):
        def hook(_module: nn.Module, args: tuple, output: Any) -> None:
            if self._mine() and id(probe) in self._active:
                probe.tap(key, args, output)

        return hook

    def _end(self, probe: Probe):
        restore = getattr(probe, "result", None)

        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not self._mine() or id(probe) not in self._active:
                return None
            watch = self._active.pop(id(probe))
            if watch is not None:
                watch.__exit__(None, None, None)
            if output is None:  # the forward raised: nothing to record
                probe.begin()
                return None
            self._tracker.quiet += 1
            try:
                emission = probe.end(args, kwargs, output)
                probe.begin()  # drop references to this call's tensors
                self._take(probe, emission)
            finally:
                self._tracker.quiet -= 1
                # what the caller asked for (e.g. no attention weights), whatever happened
                returned = restore(output) if restore is not None else None
            return returned

        return hook

    # -- attention found by what modules compute (probes.kernels) --------------------------
    def _mode(self, on: bool) -> None:
        """The tracker's torch function mode on or off (entered at most once)."""
        if on != self._mode_on:
            if on:
                self._tracker.__enter__()
            else:
                self._tracker.__exit__(None, None, None)
            self._mode_on = on

    def _wanted(self) -> bool:
        """Whether the running module needs the mode: not a registered one (its probe reads
        it), and one whose own code may start a kernel, or while a softmax result is being
        followed (it may reach a product with values through any module)."""
        stack = self._tracker.stack
        if not stack or stack[-1].covered:
            return False
        return id(stack[-1].module) not in self._quiet_frames or any(f.tainted for f in stack)

    def _push(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not self._mine():
                return
            stack = self._tracker.stack
            covered = (bool(stack) and stack[-1].covered) or id(module) in self._covered
            stack.append(Frame(name, module, args, kwargs, covered))
            self._mode(self._wanted())

        return hook

    def _pop(self, _module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> None:
        stack = self._tracker.stack
        if not self._mine() or not stack:
            return
        frame = stack.pop()
        try:
            if stack and frame.tainted:  # a softmax result handed back to the caller
                outs = output if isinstance(output, (tuple, list)) else (output,)
                for t in outs:
                    hit = frame.tainted.get(id(t))
                    if hit is not None and hit[0] is t:
                        stack[-1].tainted[id(t)] = hit
            if (frame.calls or frame.problems) and not frame.covered and output is not None:
                self._tracker.quiet += 1
                try:
                    self._kernels(frame, stack)
                finally:
                    self._tracker.quiet -= 1
        finally:
            self._mode(self._wanted())

    def _note_input(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._mine():
            x = first_image(args, kwargs)
            if x is not None:
                self._scene["images"] = int(x.shape[0])
                self._scene["image_size"] = (int(x.shape[-2]), int(x.shape[-1]))

    def _kernels(self, frame: Frame, stack: list[Frame]) -> None:
        rec = self.recording
        assert rec is not None  # hooks exist only inside the ``with``
        if self._patterns is not None and not any(
            fnmatch.fnmatchcase(frame.name, p) for p in self._patterns
        ):
            return
        if frame.problems:
            rec.unrecorded.setdefault(frame.name, frame.problems[0])
        scene = Scene(
            frame.module,
            frame.args,
            frame.kwargs,
            [(f.module, f.args, f.kwargs) for f in reversed(stack)],
            self._scene.get("images"),
            self._scene.get("image_size"),
            self._scene["tokens"],
        )
        layout = layout_for(scene)
        for i, call in enumerate(frame.calls):
            name = frame.name if len(frame.calls) == 1 else f"{frame.name}[{i}]"
            probe = self._kernel_probes.get(name)
            if probe is None:
                probe = self._kernel_probes[name] = KernelProbe(name, frame.module)
            self._take(probe, probe.emission(call, self._scene.get("images"), layout))

    def _take(self, probe: Probe, em: Emission) -> None:
        if em.problem is not None:
            self._complain(em.problem)
            return
        rec = self.recording
        assert rec is not None  # hooks exist only inside the ``with``
        r = rec._records.get(probe.name)
        if r is None:
            make = em.record_type or probe.record_type
            r = rec._records[probe.name] = make(probe.name, type(probe.module).__name__)
        for field, tensor in em.fields.items():
            r._append(field, self._store(tensor))
        r._describe(em.meta, em.geometry)  # meta's facts; self-attention: record.geometry
        if self.verify:
            with torch.no_grad():
                for what, mode, fn, low, high in em.checks:
                    self._note(probe, em, what, mode, low, high, fn())

    def _note(
        self, probe: Probe, em: Emission, what: str, mode: str, low: float, high: float, value: Any
    ) -> None:
        """Keep what a check measured in this call, in as few tensor operations as possible
        (a check runs in every forward); the capture reduces them all when it ends."""
        if mode in ("relative", "product"):
            if mode == "relative":
                actual, expected = value
                both = torch.stack([actual - expected, expected])
            else:
                actual, base, factor = value  # not addcmul: its fused product would differ
                both = torch.stack(
                    [actual - base * factor, actual]
                )  # by rounding from the module's
            dims = tuple(range(1, both.dim()))
            value = torch.linalg.vector_norm(both, float("inf"), dim=dims)  # [max|a-e|, max|e|]
        elif mode == "range":
            value = torch.stack(torch.aminmax(value.detach()))  # [min, max]
        seen = self._errors.get((probe.name, what))
        if seen is None:
            dtypes = [t.dtype for t in em.fields.values() if t.is_floating_point()]
            tolerance = max((TOLERANCE.get(d, 1e-4) for d in dtypes), default=1e-4)
            seen = self._errors[(probe.name, what)] = [[], 0, tolerance, mode, low, high]
        seen[0].append(value)  # made under no_grad: nothing to detach
        seen[1] += 1
        if len(seen[0]) >= 256:  # long captures: keep memory flat
            seen[0] = [_worst([(seen[0], mode, low, high)])[0].reshape(1)]

    def _complain(self, message: str) -> None:
        if self.verify == "raise":
            raise FaithfulnessError(message)
        warnings.warn(message, CaptureWarning, stacklevel=4)

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> Recording:
        if self._handles or self._thread is not None:
            raise RuntimeError("this capture is active already; it cannot be entered twice")
        self.recording = Recording()
        self.recording.refused = {r.name: r.reason for r in self.refused}
        self._thread = threading.get_ident()
        self._errors = {}
        try:
            if self.compiled:
                _eager_enter()
                self._eager = True
            self._handles.append(self.root.register_forward_pre_hook(self._count_forward))
            for probe in self.probes:
                self._handles += probe.attach(self.root)
            for probe in self.probes:
                probe.keep_features = self.features
                probe.factored = self.attention == "factors"
                m = probe.module
                self._handles.append(
                    m.register_forward_pre_hook(self._begin(probe), with_kwargs=True)
                )
                for key, sub in probe.taps().items():
                    self._handles.append(sub.register_forward_hook(self._tap(probe, key)))
                self._handles.append(
                    m.register_forward_hook(self._end(probe), with_kwargs=True, always_call=True)
                )
            if self._generic:
                self._scene = {"tokens": token_layout(self.root)}
                self._handles.append(
                    self.root.register_forward_pre_hook(self._note_input, with_kwargs=True)
                )
                for name, m in self._tracked:
                    push = self._push(name)  # first of the module's pre-hooks, last post-hook
                    self._handles.append(
                        m.register_forward_pre_hook(push, with_kwargs=True, prepend=True)
                    )
                    self._handles.append(
                        m.register_forward_hook(self._pop, with_kwargs=True, always_call=True)
                    )
            if self.eval:
                self._eval_modules = _eval_enter(self.root, self._modules)
        except BaseException:
            self.remove()
            raise
        if self.refused:
            listed = "; ".join(f"{r.name}: {r.reason}" for r in self.refused[:3])
            more = f" (and {len(self.refused) - 3} more)" if len(self.refused) > 3 else ""
            warnings.warn(f"not recorded by design: {listed}{more}", CaptureWarning, stacklevel=2)
        return self.recording

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.remove()
        checks = self._finish()
        rec = self.recording
        if exc_type is None and rec is not None:
            if rec.unrecorded:
                listed = "; ".join(f"{n}: {why}" for n, why in rec.unrecorded.items())
                self._complain(
                    f"attention ran but was NOT recorded in {len(rec.unrecorded)} module(s) "
                    f"(the records are partial; Recording.unrecorded lists them): {listed}"
                )
            if not self.probes and not len(rec) and not rec.unrecorded and rec.forwards:
                if rec.refused:
                    raise _all_refused(dict(rec.refused))
                raise NoAttentionError(self._nothing_applied(rec))
        if exc_type is None:
            failed = [c for c in checks if not c.ok]
            if failed:
                lines = "; ".join(
                    f"{c.name}: {c.what} off by {c.error:.3g} (tolerance {c.tolerance:g})"
                    if math.isfinite(cast(float, c.error))  # set by _finish
                    else f"{c.name}: {c.what} not finite (NaN or infinity in the module's "
                    "output or attention)"
                    for c in failed
                )
                self._complain(
                    f"captured attention disagrees with what the module computed: {lines}. "
                    "The registration may name the wrong submodule or kind."
                )

    def _nothing_applied(self, rec: Recording) -> str:
        """Why a capture that found no registered module recorded nothing."""
        model = type(self.root).__name__
        if self._kinds is not None:
            return (
                f"{model} has no attention module of kind {sorted(self._kinds)}: none is "
                "registered, and no module ran scaled_dot_product_attention or multiplied "
                "values by a softmax result in this forward pass"
            )
        return (
            f"{model} applied no attention in this forward pass: no module attnviz "
            "recognises ran, and no module called scaled_dot_product_attention or "
            "multiplied values by a softmax result. If it applies attention in another "
            "form, teach attnviz with attnviz.register_attention_type(ModuleType, kind=..., "
            "submodule=...)."
        )

    def _finish(self) -> list[Check]:
        if self.recording is None or not self._errors:
            return []
        keys = list(self._errors)
        worst = _worst([(e[0], e[3], e[4], e[5]) for e in self._errors.values()])
        checks = [
            Check(name, what, err, self._errors[(name, what)][2], self._errors[(name, what)][1])
            for (name, what), err in zip(keys, worst.tolist())
        ]
        self.recording.checks = checks
        self._errors = {}
        return checks

    def remove(self) -> None:
        """Remove every hook, restore train/eval flags and the compile stance; safe twice."""
        try:
            while self._handles:
                self._handles.pop().remove()
            for watch in self._active.values():
                if watch is not None:
                    watch.__exit__(None, None, None)
            self._active = {}
            self._tracker.stack.clear()  # a forward that raised past its hooks
            self._mode(False)
        finally:
            _eval_exit(self._eval_modules)
            self._eval_modules = []
            if self._eager:
                self._eager = False
                _eager_exit()
            self._thread = None
