"""A small, honest training loop: progress, history as data, seeds, atomic checkpoints.

    history = fit(model, train_set, test_set, epochs=10)
    history.table()            # per epoch: loss, accuracy, seconds
    save_checkpoint("stcnn.pt", model, history=history)

``train`` may be a callable ``epoch -> dataset`` to draw fresh random distortions
of the same training digits every epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import storage
from ._compat import module_getattr
from .running import inference, model_device

__all__ = [
    "EpochStats",
    "History",
    "PhasedHistory",
    "compare",
    "evaluate",
    "fit",
    "fit_upright",
    "load_checkpoint",
    "logits",
    "pick_device",
    "save_checkpoint",
    "snapshot_attention",
    "stn_param_groups",
]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA, else Apple's MPS, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class EpochStats:
    """One epoch's figures (epoch 0 is the untrained model when a test set is given)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float  # training time of this epoch (evaluation and snapshots excluded)


@dataclass
class History:
    """What :func:`fit` did, as plain data."""

    epochs: list[EpochStats] = field(default_factory=list)
    snapshots: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1

    @property
    def train_seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    @property
    def final(self) -> EpochStats:
        return self.epochs[-1]

    def snapshot(self, name: str) -> torch.Tensor:
        """Stack of one snapshot over epochs: (E + 1) x ... (index 0 = before training)."""
        if name not in self.snapshots:
            raise KeyError(f"no snapshot {name!r}; have {list(self.snapshots)}")
        return torch.stack(self.snapshots[name])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, tensors): safe for ``torch.load(weights_only=True)``."""
        return {
            "epochs": [asdict(e) for e in self.epochs],
            "snapshots": {k: self.snapshot(k) for k in self.snapshots},
            "device": self.device,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        h = cls(device=d.get("device", "cpu"), threads=d.get("threads", 1))
        h.epochs = [EpochStats(**e) for e in d.get("epochs", [])]
        h.snapshots = {k: list(v.unbind(0)) for k, v in d.get("snapshots", {}).items()}
        return h

    def table(self) -> str:
        """A Markdown table of the epochs."""
        rows = [
            "| epoch | train loss | train acc | test loss | test acc | seconds |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for e in self.epochs:
            rows.append(
                f"| {e.epoch} | {e.train_loss:.4f} | {e.train_acc:.4f} | {e.test_loss:.4f} "
                f"| {e.test_acc:.4f} | {e.seconds:.1f} |"
            )
        return "\n".join(rows)


# -- batches ------------------------------------------------------------------------------
def _xy(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


def _batches(
    dataset: Any, batch_size: int, shuffle: bool, gen: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches; datasets holding ``images``/``labels`` tensors are sliced directly."""
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        n = len(labels)
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield images[idx], labels[idx]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=shuffle, generator=gen)
    for batch in loader:
        yield _xy(batch)


def logits(
    model: nn.Module, dataset: Any, batch_size: int = 500, device: str | torch.device | None = None
) -> torch.Tensor:
    """Logits for every sample (on the CPU), in eval mode; every module's mode is restored."""
    dev = pick_device(device) if device is not None else model_device(model)
    with inference(model):
        out = [
            model(x.to(dev)).float().cpu() for x, _ in _batches(dataset, batch_size, False, None)
        ]
    return torch.cat(out)


def evaluate(
    model: nn.Module, dataset: Any, batch_size: int = 500, device: str | torch.device | None = None
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``dataset``."""
    out = logits(model, dataset, batch_size, device)
    labels = torch.cat([y for _, y in _batches(dataset, batch_size, False, None)])
    return F.cross_entropy(out, labels).item(), (out.argmax(1) == labels).float().mean().item()


def snapshot_attention(
    probe: torch.Tensor, field: str = "data", *, predictions: bool = True, **capture_kwargs: Any
):
    """A ``snapshot`` callable for :func:`fit`: the captured attention on fixed probe images.

    Returns ``model -> {record name: tensor}`` (``field`` of each record, e.g. ``"theta"``
    or ``"output"``), plus ``"predictions"`` (the predicted class of each probe image)
    when ``predictions`` is true. Captured in eval mode under ``no_grad``; the model is
    left as it was.
    """
    from .capture import capture

    def take(model: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad(), capture(model, **capture_kwargs) as rec:
            logits = model(probe.to(model_device(model)))
        out = {name: getattr(r, field) for name, r in rec.items()}
        if predictions:
            out["predictions"] = logits.argmax(1).cpu()
        return out

    return take


def compare(histories: Mapping[str, History]) -> str:
    """A Markdown table comparing trained models: epochs, training seconds, test accuracy."""
    rows = [
        "| model | epochs | train seconds | test accuracy | test error |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, h in histories.items():
        e, secs, acc = h.final, h.train_seconds, h.final.test_acc
        rows.append(f"| {name} | {e.epoch} | {secs:.1f} | {acc:.2%} | {1 - acc:.2%} |")
    return "\n".join(rows)


def stn_param_groups(model: nn.Module, lr: float = 3e-3, stn_lr: float = 3e-4) -> list[dict]:
    """Optimizer groups giving every spatial transformer a smaller learning rate.

    A localisation network that moves too fast early on jumps between poor crops
    (measured on RTS: lr 1e-3 for the STN is slower and less stable than 3e-4).
    """
    from .modules import SpatialTransformer, TwoStageTransformer

    kinds = (SpatialTransformer, TwoStageTransformer)
    stn = {id(p) for m in model.modules() if isinstance(m, kinds) for p in m.parameters()}
    rest = [p for p in model.parameters() if id(p) not in stn]
    stn_params = [p for p in model.parameters() if id(p) in stn]
    return [
        g for g in ({"params": stn_params, "lr": stn_lr}, {"params": rest, "lr": lr}) if g["params"]
    ]


# -- the loop ----------------------------------------------------------------------------
def _auxiliary(modules: list[nn.Module]) -> torch.Tensor | float:
    """The sum of the ``auxiliary_loss`` tensors ``modules`` set in this forward pass (e.g.
    a two-stage transformer's rotation consistency); 0 when none did."""
    total: torch.Tensor | float = 0.0
    for m in modules:
        extra = getattr(m, "auxiliary_loss", None)
        if isinstance(extra, torch.Tensor):
            total = total + extra
    return total


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "batches": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_from(path: Path, config: dict[str, Any], resume: bool, overwrite: bool):
    """The checkpoint to continue from, ``None`` to start afresh, or an error."""
    if not path.exists() or overwrite:
        return None
    state = storage.read(path)
    done = state.get("epoch") if isinstance(state, dict) else None
    if not resume:
        of = f" (epoch {done} of {state.get('fit', {}).get('epochs', '?')})" if done else ""
        raise FileExistsError(
            f"{path} holds a checkpoint{of}: fit() would replace it after its first epoch. "
            "Pass resume=True to continue that run, overwrite=True to start over and replace "
            "it, or another checkpoint path"
        )
    if done is None or not isinstance(state.get("fit"), dict):
        raise ValueError(
            f"{path} is a checkpoint without the training state fit() resumes from (saved by "
            "save_checkpoint, not by fit); pass overwrite=True to start over"
        )
    differ = {k: (state["fit"].get(k), v) for k, v in config.items() if state["fit"].get(k) != v}
    if differ:
        listed = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"{path} was saved by another training run ({listed}); resume it with the same "
            "arguments, or pass overwrite=True to start over"
        )
    return state


def fit(
    model: nn.Module,
    train: Any,
    test: Any = None,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = "onecycle",
    device: str | torch.device | None = None,
    seed: int = 0,
    snapshot: Callable[[nn.Module], Mapping[str, torch.Tensor]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    param_groups: list[dict] | None = None,
) -> History:
    """Train ``model`` with cross-entropy and return its :class:`History`.

    Args:
        model: any classifier returning logits.
        train: a data set of (image, label, ...) samples, or a callable ``epoch -> data set``
            (fresh random distortions every epoch, say).
        test: evaluated after every epoch (and before the first) when given.
        epochs, batch_size, lr, weight_decay: the usual.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0 as in the PyTorch tutorial).
        schedule: ``"onecycle"`` (cosine one-cycle over all steps) or ``None`` (constant).
        device: ``None`` picks CUDA, then MPS, then CPU.
        seed: seeds the weights' random stream, dropout and the batch order. On the CPU two
            runs with the same seed give the same weights bit for bit; cuDNN kernels on a GPU
            are not bitwise deterministic unless ``torch.use_deterministic_algorithms(True)``.
        snapshot: called with the model before training and after each epoch; the
            tensors it returns are kept in ``history.snapshots`` (e.g.
            :func:`snapshot_attention` for the theta of fixed probe images).
        checkpoint: path written atomically after every epoch with everything needed to
            continue: model, optimizer, scheduler, random generators, epoch and history.
        resume: continue the run saved in ``checkpoint`` (from the epoch after the last
            one saved; a run that finished returns its history). Interrupted and resumed,
            a run on the CPU ends with the same weights, bit for bit, as an uninterrupted
            one. Without a checkpoint file, the run starts from the beginning.
        overwrite: start from the beginning even though ``checkpoint`` exists, replacing
            it. With neither ``resume`` nor ``overwrite``, an existing checkpoint is an
            error: re-running a cell never silently destroys a longer run's progress.
        progress: show ``tqdm.auto`` bars (epoch loss and accuracy).
        param_groups: optimizer parameter groups to use instead of ``model.parameters()``
            (for example a smaller learning rate for a localisation network).

    Raises:
        FileExistsError: ``checkpoint`` exists and neither ``resume`` nor ``overwrite``.
        ValueError: bad arguments, or a checkpoint saved by a run with other arguments.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = pick_device(device)
    model.to(dev)
    params = param_groups if param_groups is not None else model.parameters()
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    data = train if callable(train) else (lambda _epoch: train)
    first = data(0)
    steps = epochs * math.ceil(len(first) / batch_size)
    sched = None
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps, pct_start=0.15
        )
    elif schedule is not None:
        raise ValueError(f"schedule must be 'onecycle' or None, got {schedule!r}")
    config = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "seed": seed,
        "n": len(first),
    }
    history = History(device=str(dev), threads=torch.get_num_threads())
    start_epoch = 1
    saved = _resume_from(Path(checkpoint), config, resume, overwrite) if checkpoint else None
    if saved is not None:
        storage.load_strict(model, saved["model"], source=f"the checkpoint {checkpoint}")
        opt.load_state_dict(saved["optimizer"])
        if sched is not None:
            sched.load_state_dict(saved["scheduler"])
        history = History.from_dict(saved["history"])
        _set_rng_state(saved["rng"], gen)
        start_epoch = saved["epoch"] + 1

    def keep_snapshot() -> None:
        if snapshot is not None:
            for k, v in snapshot(model).items():
                history.snapshots.setdefault(k, []).append(v.detach().cpu().clone())

    if saved is None:
        keep_snapshot()
        if test is not None:
            loss0, acc0 = evaluate(model, test, device=dev)
            history.epochs.append(EpochStats(0, math.nan, math.nan, loss0, acc0, 0.0))
    bar = tqdm(
        range(start_epoch, epochs + 1),
        desc="epochs",
        disable=not progress,
        initial=start_epoch - 1,
        total=epochs,
    )
    # the modules that can add a loss of their own, found once rather than every step
    extra = [m for m in model.modules() if hasattr(m, "auxiliary_loss")]
    for epoch in bar:
        dataset = first if epoch == 1 else data(epoch - 1)
        model.train()
        start = time.perf_counter()
        total, correct, loss_sum = 0, 0, 0.0
        for x, y in _batches(dataset, batch_size, True, gen):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            (loss + _auxiliary(extra)).backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += len(y)
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
        seconds = time.perf_counter() - start
        test_loss, test_acc = (
            evaluate(model, test, device=dev) if test is not None else (math.nan,) * 2
        )
        stats = EpochStats(epoch, loss_sum / total, correct / total, test_loss, test_acc, seconds)
        history.epochs.append(stats)
        keep_snapshot()
        bar.set_postfix(
            loss=f"{stats.train_loss:.3f}", acc=f"{stats.train_acc:.3f}", test_acc=f"{test_acc:.3f}"
        )
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                model,
                optimizer=opt,
                history=history,
                training={
                    "epoch": epoch,
                    "scheduler": sched.state_dict() if sched else None,
                    "rng": _rng_state(gen),
                    "fit": config,
                },
            )
    model.eval()
    return history


# -- checkpoints --------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    history: History | None = None,
    training: Mapping[str, Any] | None = None,
    **meta: Any,
) -> Path:
    """Write ``model``'s state (and optimiser, history, plain ``meta``) atomically.

    The file is written to a temporary name in the same folder and moved into place
    with ``os.replace``, so a crash never leaves a half-written checkpoint. Only plain
    data is stored, so :func:`load_checkpoint` can read it with ``weights_only=True``;
    ``meta`` that it would refuse (a ``Path``, a numpy array, any object) is refused here,
    before anything is written.

    Args:
        path: the file to write.
        model: its ``state_dict`` is saved.
        optimizer: its state too, if given.
        history: a :class:`History`.
        training: what :func:`fit` needs to resume (``epoch``, ``scheduler``, ``rng``,
            ``fit``); set by ``fit`` itself.
        meta: plain data (numbers, strings, lists, dicts, tensors) stored under ``"meta"``.

    Raises:
        TypeError: a ``meta`` value ``weights_only`` loading would refuse (the key is named).
    """
    return storage.write_checkpoint(
        path,
        model,
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        history=history.to_dict() if history is not None else None,
        training=training,
        meta=meta,
    )


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint (:func:`attnviz.storage.read_checkpoint`); load it into ``model`` if given.

    The model changes only if every key and shape of the file fits it; otherwise nothing
    is loaded and the error lists what differs.

    Returns the checkpoint dict, with ``"history"`` as a :class:`History` when present.

    Raises:
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a folder.
        ValueError: an empty, truncated, corrupt or text file; a file of pickled Python
            objects (refused: loading them could run arbitrary code); weights that do not
            fit ``model``.
    """
    state = storage.read_checkpoint(path, model, map_location=map_location)
    if state.get("history") is not None:
        state["history"] = History.from_dict(state["history"])
    return state


__getattr__ = module_getattr("attnviz.train", {"predict": ("logits", lambda: logits)})


# -- training in phases: a two-stage transformer that turns digits upright ------------------
@dataclass
class PhasedHistory:
    """The histories of a training run in phases, by phase name, in order."""

    phases: dict[str, History]

    @property
    def train_seconds(self) -> float:
        return sum(h.train_seconds for h in self.phases.values())

    @property
    def final(self) -> EpochStats:
        return list(self.phases.values())[-1].final


def _dataset_at(data: Any, offset: int) -> Any:
    return (lambda e: data(offset + e)) if callable(data) else data


def fit_upright(
    model: nn.Module,
    train: Any,
    test: Any = None,
    *,
    upright: Any = None,
    pre_epochs: int = 14,
    stn_epochs: int = 9,
    joint_epochs: int = 2,
    stn_lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> PhasedHistory:
    """Train an ST-CNN whose transformer must turn digits upright, in three phases.

    1. ``classifier``: ``model.cnn`` alone on nearly upright digits (``upright``; default
       fresh ``distorted_mnist("upright")`` each epoch), Adam 6e-3, batch 128;
    2. ``transformer``: ``model.stn`` on ``train`` (lr ``stn_lr``) with the classifier
       frozen, so the only way to lower the loss is to hand it upright digits;
    3. ``joint``: both, briefly (transformer ``stn_lr / 10``, classifier 1e-3).

    A classifier free to learn from the start learns to read turned digits itself, and the
    transformer then has no reason to turn them (measured: ``STCNN.for_rts()`` applies a
    mean rotation of under 1 degree where the digits need 23).

    Args:
        model: an :class:`~attnviz.models.STCNN` (anything with ``.stn`` and ``.cnn``).
        train: a data set, or ``epoch -> data set`` (fresh distortions each epoch);
            phase 3 continues the epochs of phase 2.
        test: evaluated after every epoch of phases 2 and 3.
        upright: the classifier's data (data set or callable).
        pre_epochs, stn_epochs, joint_epochs: epochs per phase (0 skips a phase).
        stn_lr: the transformer's learning rate in phase 2.
        seed, device, progress: as for :func:`fit`.

    Returns:
        A :class:`PhasedHistory` (``classifier``, ``transformer``, ``joint``). Every
        parameter's ``requires_grad`` is restored.
    """
    stn, cnn = getattr(model, "stn", None), getattr(model, "cnn", None)
    if not isinstance(stn, nn.Module) or not isinstance(cnn, nn.Module):
        raise TypeError("fit_upright needs a model with .stn and .cnn modules (an STCNN)")
    if upright is None:
        from .data import distorted_mnist

        def upright(e: int) -> Any:
            return distorted_mnist("upright", "train", seed=500 + e)

    common: dict[str, Any] = {"seed": seed, "device": device, "progress": progress}
    phases: dict[str, History] = {}
    if pre_epochs:
        phases["classifier"] = fit(
            cnn, upright, None, epochs=pre_epochs, lr=6e-3, batch_size=128, **common
        )
    flags = [p.requires_grad for p in cnn.parameters()]
    try:
        if stn_epochs:
            for p in cnn.parameters():
                p.requires_grad_(False)
            phases["transformer"] = fit(
                model,
                train,
                test,
                epochs=stn_epochs,
                param_groups=[{"params": list(stn.parameters()), "lr": stn_lr}],
                **common,
            )
    finally:
        for p, flag in zip(cnn.parameters(), flags):
            p.requires_grad_(flag)
    if joint_epochs:
        groups = [
            {"params": list(stn.parameters()), "lr": stn_lr / 10},
            {"params": list(cnn.parameters()), "lr": 1e-3},
        ]
        phases["joint"] = fit(
            model,
            _dataset_at(train, stn_epochs),
            test,
            epochs=joint_epochs,
            param_groups=groups,
            **common,
        )
    return PhasedHistory(phases)
