"""Training resumes where it stopped, and ends with the same weights as if it never had."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from attnviz.models import small_resnet
from attnviz.train import fit, load_checkpoint, save_checkpoint


def _toy(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=g)
    y = (x[:, 0, :, :6].mean((1, 2)) > x[:, 0, :, 6:].mean((1, 2))).long()
    return torch.utils.data.TensorDataset(x, y)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(4 * 10 * 10, 2),
    )


def _fit(model, path, **kw):
    args = {"epochs": 5, "batch_size": 32, "lr": 3e-3, "progress": False, "device": "cpu"}
    return fit(model, lambda e: _toy(seed=e), _toy(64, seed=99), checkpoint=path, **(args | kw))


def test_resuming_after_any_epoch_gives_the_uninterrupted_weights(tmp_path):
    whole = _net()
    h_whole = _fit(whole, tmp_path / "whole.pt")
    for stop in (1, 3):  # run the first `stop` epochs, as an interrupted run leaves them
        partial = _net()
        path = tmp_path / f"part{stop}.pt"
        _fit_until(partial, path, stop)
        assert load_checkpoint(path)["epoch"] == stop
        resumed = _net()  # a fresh process would build the model anew
        h = _fit(resumed, path, resume=True)
        for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), k
        assert [e.epoch for e in h.epochs] == [e.epoch for e in h_whole.epochs]
        assert [e.test_acc for e in h.epochs] == [e.test_acc for e in h_whole.epochs]
    # a finished run resumed again returns its history and changes nothing
    again = _net()
    h = _fit(again, tmp_path / "whole.pt", resume=True)
    assert h.final.epoch == 5 and torch.equal(again[5].weight, whole[5].weight)


def _fit_until(model, path, stop):
    """The first ``stop`` epochs of the 5-epoch run, and its checkpoint (as a kill leaves it)."""

    import attnviz.train as train

    class Stop(Exception):
        pass

    real = train.save_checkpoint

    def save_then_stop(*a, **k):
        real(*a, **k)
        if k.get("training", {}).get("epoch") == stop:
            raise Stop

    train.save_checkpoint = save_then_stop
    try:
        _fit(model, path)
    except Stop:
        pass
    finally:
        train.save_checkpoint = real


def test_re_running_never_silently_replaces_a_longer_run(tmp_path):
    path = tmp_path / "run.pt"
    _fit(_net(), path, epochs=3)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"epoch 3 of 3.*resume=True.*overwrite=True"):
        _fit(_net(), path, epochs=3)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match=r"another training run \(epochs: checkpoint 3, now 4"):
        _fit(_net(), path, epochs=4, resume=True)
    _fit(_net(), path, epochs=2, overwrite=True)
    assert load_checkpoint(path)["epoch"] == 2
    save_checkpoint(tmp_path / "plain.pt", _net())
    with pytest.raises(ValueError, match="without the training state"):
        _fit(_net(), tmp_path / "plain.pt", resume=True)


_CHILD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_resume import _fit, _net
    model = _net()
    _fit(model, {path!r}, epochs={epochs}, resume=True)
    torch.save(model.state_dict(), {out!r})
    """
)


@pytest.mark.slow
def test_a_killed_training_process_resumes_to_the_same_weights(tmp_path):
    """kill -9 in the middle of a run, run the same command again, compare with a run
    that was never interrupted (all on one thread, in fresh processes)."""
    epochs = 12
    tests = str(Path(__file__).parent)

    def child(name):
        code = _CHILD.format(
            tests=tests,
            path=str(tmp_path / f"{name}.pt"),
            epochs=epochs,
            out=str(tmp_path / f"{name}.final"),
        )
        return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)

    assert child("whole").wait(timeout=600) == 0
    run = child("killed")
    path = tmp_path / "killed.pt"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a few epochs, then kill it mid-epoch
        if path.exists() and load_checkpoint(path)["epoch"] >= 3:
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    stopped = load_checkpoint(path)["epoch"]
    assert 3 <= stopped < epochs, "the run should have been killed part of the way"
    assert child("killed").wait(timeout=600) == 0
    whole = torch.load(tmp_path / "whole.final", weights_only=True)
    resumed = torch.load(tmp_path / "killed.final", weights_only=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    h = load_checkpoint(path)["history"]
    assert [e.epoch for e in h.epochs] == list(range(epochs + 1))


def test_a_checkpoint_of_another_model_changes_nothing(tmp_path):
    se = small_resnet(attention="se", width=8)
    path = save_checkpoint(tmp_path / "se.pt", se)
    cbam = small_resnet(attention="cbam", width=8)
    before = {k: v.clone() for k, v in cbam.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit SmallResNet; nothing was loaded") as err:
        load_checkpoint(path, cbam)
    assert "channel_gate" in str(err.value)  # names what is missing
    assert all(torch.equal(before[k], v) for k, v in cbam.state_dict().items())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello, I am text\n", "not a PyTorch file"),
        (None, "truncated or corrupt"),
        ("dir", "is a folder"),
    ],
)
def test_both_loaders_explain_bad_files(tmp_path, content, message):
    from attnviz.zoo import load_official_cbam

    if content == "dir":
        path = tmp_path
    else:
        path = tmp_path / "bad.pt"
        if content is None:  # the first half of a real checkpoint
            save_checkpoint(path, _net())
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            path.write_bytes(content)
    for load in (load_checkpoint, load_official_cbam):
        with pytest.raises((ValueError, OSError), match=message):
            load(path)
