"""Every capture checks its records against what the modules computed; wrong registrations,
gates that never run, compiled models and threads never give a silently wrong picture."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

import attnviz
from attnviz import FaithfulnessError, SqueezeExcitation


class _SE(nn.Module):
    """An SE block written the way timm writes it: convs, then a ``gate`` submodule."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, 2, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(2, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class _GatedTwice(nn.Module):
    """Gates, then adds a context term after the gate (GCNet's add + scale form)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.se = _SE(c)
        self.gate = self.se.gate
        self.add = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(x) + self.add(x.mean((2, 3), keepdim=True))


class _Unused(nn.Module):
    """Has a gate submodule that its forward never calls (as timm's GC with fuse_add only)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.fixture
def temporary_type():
    """Register test types for one test, and forget them afterwards."""
    done = []

    def reg(t, *args, **kwargs):
        attnviz.register_attention_type(t, *args, overwrite=True, **kwargs)
        done.append(t)

    yield reg
    for t in done:
        attnviz.unregister_attention_type(t)


def _x(c=8):
    return torch.randn(2, c, 5, 5)


def test_a_correct_registration_passes_every_check(temporary_type):
    temporary_type(_SE, "channel", "gate")
    m = _SE()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attnviz.capture(m, verify="raise") as rec:
            m(_x())
    (check,) = rec.checks  # a sigmoid cannot leave [0, 1]: no range check for it
    assert check.ok and check.error == 0.0 and check.calls == 1  # the same product, bit for bit
    assert check.what == "output == input * channel gate"


def test_the_wrong_submodule_warns_with_the_module_and_the_error(temporary_type):
    temporary_type(_SE, "channel", "fc2")  # the logits before the sigmoid
    m = _SE()
    with pytest.warns(attnviz.CaptureWarning) as caught:
        with attnviz.capture(m) as rec:
            m(_x())
    message = str(caught[-1].message)
    assert "disagrees with what the module computed" in message and "output == input" in message
    assert "0 <= weights <= 1" in message  # logits leave [0, 1]
    failed = [c for c in rec.checks if not c.ok]
    assert failed and all(c.error > 0.01 for c in failed)
    with pytest.raises(FaithfulnessError, match="wrong submodule or kind"):
        with attnviz.capture(m, verify="raise"):
            m(_x())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attnviz.capture(m, verify=False) as rec:  # no checks: no warning, no check list
            m(_x())
    assert rec.checks == [] and rec[""].weights.shape == (2, 8)


def test_the_wrong_kind_records_nothing_and_says_why(temporary_type):
    temporary_type(_SE, "spatial", "gate")
    m = _SE()
    with pytest.warns(attnviz.CaptureWarning, match=r"not one weight per position"):
        with attnviz.capture(m) as rec:
            m(_x())
    assert len(rec) == 0 and repr(rec) == "Recording()"
    with pytest.raises(FaithfulnessError, match="not one weight per position"):
        with attnviz.capture(m, verify="raise"):
            m(_x())


class _TwoPaths(nn.Module):
    """Selects between two paths per channel with one gate of 2C weights (SKNet's form)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, 2 * c, 1)
        self.gate = nn.Sigmoid()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate(self.fc(x.mean((2, 3), keepdim=True)))
        return x * w[:, : self.c] + x.flip(-1) * w[:, self.c :]


def test_a_channel_gate_of_another_length_is_refused(temporary_type):
    temporary_type(_TwoPaths, "channel", "gate")
    m = _TwoPaths()
    with pytest.warns(attnviz.CaptureWarning, match=r"not one weight per channel of its 8-channel"):
        with attnviz.capture(m) as rec:
            m(_x())
    assert len(rec) == 0


def test_a_term_added_after_the_gate_is_caught(temporary_type):
    temporary_type(_GatedTwice, "channel", "gate")  # as if GCNet's add + scale were an SE block
    g = _GatedTwice()
    with pytest.warns(attnviz.CaptureWarning, match="output == input \\* channel gate off by"):
        with attnviz.capture(g, blocks="") as rec:
            g(_x())
    assert rec[""].weights.shape == (2, 8)  # recorded, and the warning says it is not all
    (bad,) = [c for c in rec.checks if not c.ok]
    assert bad.name == "" and bad.error > 0.01


def test_a_gate_that_never_runs_is_reported_and_repr_never_raises(temporary_type):
    temporary_type(_Unused, "channel", "gate")
    m = _Unused()
    with pytest.warns(attnviz.CaptureWarning, match=r"ran, but its submodule 'gate' was not"):
        with attnviz.capture(m, features=True) as rec:
            m(_x())
    assert len(rec) == 0
    assert repr(rec) == "Recording()"
    r = attnviz.ChannelRecord("x", "T")
    r._append("features", torch.zeros(1, 2, 3, 3))  # features but no weights
    assert "nothing recorded" in repr(r)


def test_verify_rejects_nonsense():
    with pytest.raises(TypeError, match="verify must be True, False or 'raise'"):
        attnviz.capture(SqueezeExcitation(4), verify="warn")


def test_transform_check_resamples_the_output(tiny_stnet):
    with torch.no_grad():
        tiny_stnet.stn.head.weight.normal_(0, 0.05)
    with attnviz.capture(tiny_stnet, verify="raise") as rec:
        tiny_stnet(torch.rand(3, 1, 28, 28))
    (check,) = rec.checks
    assert check.what == "output == source sampled at theta's grid" and check.error < 1e-6


# -- compiled models ------------------------------------------------------------------------
def _records(rec):
    return {n: r.data.clone() for n, r in rec.items()}


@pytest.mark.slow
def test_a_compiled_model_records_what_the_eager_model_records(tiny_net):
    tiny_net.eval()
    x = torch.rand(2, 3, 16, 16)
    with attnviz.capture(tiny_net) as rec:
        eager_out = tiny_net(x)
    eager = _records(rec)
    compiled = torch.compile(tiny_net, backend="eager")
    compiled(x)  # compiled before the capture, as users do
    with attnviz.capture(compiled) as rec:
        out = compiled(x)
    assert list(rec) == list(eager) == ["se", "cbam.channel_gate", "cbam.spatial_gate"]
    for name, data in eager.items():
        torch.testing.assert_close(rec[name].data, data, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=0)
    # afterwards the compiled code runs again: a plain hook is not seen inside it
    seen = []
    h = tiny_net.se.gate.register_forward_hook(lambda *a: seen.append(1))
    compiled(x)
    h.remove()
    assert seen == []
    # in-place compilation of a submodule (nn.Module.compile) is seen through as well
    tiny_net.cbam.compile(backend="eager")
    tiny_net(x)
    with attnviz.capture(tiny_net) as rec:
        tiny_net(x)
    torch.testing.assert_close(
        rec["cbam.spatial_gate"].map, eager["cbam.spatial_gate"], atol=1e-5, rtol=0
    )


# -- threads --------------------------------------------------------------------------------
def test_two_threads_capturing_one_model_each_get_their_own_records(tiny_net):
    tiny_net.train()
    tiny_net.cbam.eval()
    modes = {n: m.training for n, m in tiny_net.named_modules()}
    inputs = [torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16)]
    expected = []
    for x in inputs:
        with attnviz.capture(tiny_net) as rec:
            tiny_net(x)
        expected.append(rec["se"].weights)
    both_open = threading.Barrier(2)
    results, errors = [None, None], []

    def work(i):
        try:
            with attnviz.capture(tiny_net) as rec:
                both_open.wait(timeout=30)
                for _ in range(5):
                    tiny_net(inputs[i])
                both_open.wait(timeout=30)
                assert not tiny_net.training  # eval while any capture is open
            results[i] = rec
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for i, rec in enumerate(results):
        assert rec["se"].calls == 5 and rec["se"].batch_size == 5 * len(inputs[i])
        torch.testing.assert_close(rec["se"].weights, expected[i].repeat(5, 1), atol=1e-6, rtol=0)
    assert {n: m.training for n, m in tiny_net.named_modules()} == modes


def test_another_threads_forward_is_not_recorded(tiny_net):
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait(timeout=30)
        tiny_net(torch.rand(7, 3, 16, 16))
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with attnviz.capture(tiny_net) as rec:
        started.set()
        done.wait(timeout=30)
        tiny_net(torch.rand(1, 3, 16, 16))
    t.join()
    assert rec["se"].batch_size == 1


def test_a_module_that_computes_nan_is_named_as_such(temporary_type):
    temporary_type(_SE, "channel", "gate")
    m = _SE()
    x = _x()
    x[0, 0, 0, 0] = float("nan")
    with pytest.warns(attnviz.CaptureWarning, match=r"not finite \(NaN or infinity"):
        with attnviz.capture(m) as rec:
            m(x)
    assert any(c.error != c.error for c in rec.checks)  # NaN kept, not hidden as 0


# -- calls and images -------------------------------------------------------------------------
class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.se = SqueezeExcitation(8, 2)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        y = checkpoint(lambda t: self.se(self.conv(t)), x, use_reentrant=self.reentrant)
        return y.mean((2, 3)).sum(1)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recomputation_is_not_recorded_twice(reentrant):
    net = _Checkpointed(reentrant)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with attnviz.capture(net, eval=False) as rec:
        net(x).sum().backward()
    assert rec["se"].calls == 1 and rec["se"].batch_size == 2 and rec.forwards == 1
    assert x.grad is not None and x.grad.abs().sum() > 0  # the backward ran


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.se = SqueezeExcitation(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.se(x))


def test_a_module_called_twice_per_forward_is_visible_per_call():
    net = _Twice()
    x = torch.rand(2, 4, 5, 5)
    with attnviz.capture(net, features=True) as rec:
        out = net(x)
    r = rec["se"]
    assert rec.forwards == 1 and r.calls == 2 and r.batch_size == 4 and "calls=2" in repr(r)
    first, second = r.per_call()
    features = r.per_call("features")
    torch.testing.assert_close(features[0], x)
    torch.testing.assert_close(features[1], x * first[:, :, None, None])  # the first call's output
    torch.testing.assert_close(out, features[1] * second[:, :, None, None])
    with pytest.raises(AttributeError, match="no 'map'"):
        r.per_call("map")
