"""Running a model and leaving it as found: the one helper every public function uses.

    with inference(model):          # eval mode for every module, no autograd graph
        logits = model(x.to(model_device(model)))
    # every module's train/eval flag and the grad mode are back as they were

``model.train(was)`` would flatten a model whose submodules had mixed flags (a frozen
batch-norm inside a training network, say); :func:`inference` restores each module's
own flag. (:func:`attnviz.capture` keeps its own, thread-aware, account of the flags.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["inference", "model_device", "single_threaded"]


@contextlib.contextmanager
def inference(model: nn.Module, *, grad: bool = False) -> Iterator[nn.Module]:
    """Eval mode for every module of ``model`` and grad mode ``grad`` inside the ``with``.

    On leaving (also after an exception), every module's ``training`` flag and the grad
    mode are what they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield model
    finally:
        for m, training in modes:
            if m.training != training:
                m.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter, else of its first buffer, else the CPU."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """torch on one intra-op thread inside the ``with``; the thread count is restored.

    For work on tiny tensors, such as a widget redraw: when other processes compete for
    the cores, multi-threaded torch ops on small maps spend most of their time waiting
    for each other, now and then for a hundred times as long (measured on 2 cores beside
    2 busy torch processes, 8 trials: a 256 x 256 overlay took 0.6 ms on 2 threads in
    the median trial but 167 ms in one, never over 1.1 ms on one thread;
    benchmarks/results/2026-12-03-capture.md). The count is process-wide, so use it
    around short, synchronous work only.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
