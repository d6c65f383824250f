"""The attnviz command: the demo gallery survives a broken notebook; overlay writes a picture."""

from __future__ import annotations

import re

import nbformat
import numpy as np
import pytest
from nbfixtures import write_notebook
from PIL import Image

from attnviz.cli import main
from attnviz.photos import sample_path, sample_photos


def test_demo_reports_a_broken_notebook_and_still_renders_the_others(tmp_path, capsys):
    src = tmp_path / "nbs"
    src.mkdir()
    write_notebook(src / "01_ok.ipynb", "print('quick' if QUICK else 'full')")
    write_notebook(src / "02_broken.ipynb", "raise ValueError('deliberately broken')")
    write_notebook(src / "03_after.ipynb", "x = 1 + 1\nx")
    out = tmp_path / "gallery"
    code = main(["demo", "--notebooks", str(src), "--out", str(out), "--timeout", "120"])
    assert code == 1
    for name in ("01_ok", "02_broken", "03_after"):
        assert (out / f"{name}.html").exists() and (out / f"{name}.ipynb").exists()
    executed = nbformat.read(out / "01_ok.ipynb", as_version=4)
    assert "quick" in executed.cells[2].outputs[0]["text"]  # QUICK = True was injected
    index = (out / "index.html").read_text()
    assert "failed" in index and "deliberately broken" in index and index.count("'ok'>ok<") == 2
    assert "\x1b[" not in index  # IPython's coloured traceback, without terminal codes
    printed = capsys.readouterr()
    assert "cell 2: ValueError: deliberately broken" in printed.out + printed.err
    assert "gallery:" in printed.out


@pytest.mark.slow
def test_demo_finishes_whatever_each_notebook_does(tmp_path, capsys):
    src = tmp_path / "nbs"
    src.mkdir()
    write_notebook(src / "01_ok.ipynb", "x = 1")
    write_notebook(src / "02_sleeps.ipynb", "import time\ntime.sleep(60)")
    write_notebook(src / "03_dies.ipynb", "import os\nos._exit(1)")
    (src / "04_not_json.ipynb").write_text("{ this is not a notebook")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("y = 2")]  # no parameters cell
    nbformat.write(nb, src / "05_no_parameters.ipynb")
    write_notebook(src / "06_last.ipynb", "z = 3")
    out = tmp_path / "gallery"
    code = main(["demo", "--notebooks", str(src), "--out", str(out), "--timeout", "5"])
    assert code == 1
    index = (out / "index.html").read_text()
    rows = dict(
        re.findall(r"<td>(?:<a [^>]*>)?(\d\d_\w+)(?:</a>)?</td><td class='\w+'>([^<]+)<", index)
    )
    assert rows == {
        "01_ok": "ok",
        "02_sleeps": "timed out",
        "03_dies": "kernel died",
        "04_not_json": "not a notebook",
        "05_no_parameters": "failed",
        "06_last": "ok",
    }
    assert "tagged &#x27;parameters&#x27;" in index and "ran over 5 s" in index
    assert (out / "06_last.html").exists() and (out / "02_sleeps.html").exists()


def test_demo_refuses_to_write_over_its_sources(tmp_path, capsys):
    src = tmp_path / "nbs"
    src.mkdir()
    path = write_notebook(src / "01_ok.ipynb", "x = 1")
    before = path.read_text()
    assert main(["demo", "--notebooks", str(src), "--out", str(src)]) == 2
    assert "holds the source notebooks" in capsys.readouterr().err
    assert path.read_text() == before and not (src / "index.html").exists()


def test_parameters_are_injected_once_however_often_a_notebook_runs(tmp_path):
    from attnviz.nbrun import inject_parameters

    nb = nbformat.read(write_notebook(tmp_path / "n.ipynb", "x = 1"), as_version=4)
    for _ in range(3):
        inject_parameters(nb, {"QUICK": True})
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags.count(["injected-parameters"]) == 1 and len(nb.cells) == 3


def test_overlay_writes_a_png_and_the_maps(tmp_path):
    import torch

    photo = sample_path(sample_photos()[0])
    torch.manual_seed(0)  # the same random weights below
    out, npz = tmp_path / "o.png", tmp_path / "maps.npz"
    code = main(
        [
            "overlay",
            str(photo),
            "--model",
            "mobilenet_v3_small",
            "--weights",
            "none",
            "--size",
            "96",
            "-o",
            str(out),
            "--npz",
            str(npz),
        ]
    )
    assert code == 0
    img = Image.open(out)
    assert img.width > 3 * 90 and img.height > 90
    data = np.load(npz)
    assert data["gradcam"].shape == (224, 224) and data["probs"].shape == (1000,)
    se = [k for k in data.files if k.startswith("channel/")]
    assert len(se) == 9  # mobilenet_v3_small's SE blocks
    assert len([k for k in data.files if k.startswith("map/")]) == 9
    # the values are the network's: the same photo through the same network, our own hooks
    from torchvision.ops import SqueezeExcitation

    from attnviz.photos import prepare
    from attnviz.zoo import pretrained

    torch.manual_seed(0)
    pre = pretrained("mobilenet_v3_small", weights=None)
    x = prepare(photo, pre.transforms)
    seen = {}
    for name, m in pre.model.named_modules():
        if isinstance(m, SqueezeExcitation):

            def hook(mod, a, o, name=name):  # SE's eq. 2-3, with the block's own layers
                z = mod.avgpool(a[0])
                s = mod.scale_activation(mod.fc2(mod.activation(mod.fc1(z))))
                seen[name] = (a[0][0], s[0, :, 0, 0])

            m.register_forward_hook(hook)
    with torch.no_grad():
        probs = pre.model(x).softmax(1)[0]
    np.testing.assert_allclose(data["probs"], probs.numpy(), atol=1e-6)
    for name, (u, s) in seen.items():
        np.testing.assert_allclose(data[f"channel/{name}"], s.numpy(), atol=1e-6)
        expected = (u * s[:, None, None]).sum(0)  # sum_c s_c u_c
        np.testing.assert_allclose(data[f"map/{name}"], expected.numpy(), atol=1e-4, rtol=1e-5)


def test_overlay_refuses_an_unknown_block(tmp_path, capsys):
    photo = sample_path(sample_photos()[0])
    code = main(
        [
            "overlay",
            str(photo),
            "--model",
            "mobilenet_v3_small",
            "--weights",
            "none",
            "--block",
            "nope",
            "-o",
            str(tmp_path / "o.png"),
        ]
    )
    assert code == 2 and "no attention block 'nope'" in capsys.readouterr().err


def test_overlay_takes_timm_models_by_name(tmp_path):
    photo = sample_path(sample_photos()[0])
    out, npz = tmp_path / "o.png", tmp_path / "maps.npz"
    code = main(
        [
            "overlay",
            str(photo),
            "--model",
            "timm/gcresnet33ts",
            "--weights",
            "none",
            "--size",
            "96",
            "-o",
            str(out),
            "--npz",
            str(npz),
        ]
    )
    assert code == 0
    data = np.load(npz)
    maps = [k for k in data.files if k.startswith("context/")]
    assert maps and all(abs(float(data[k].sum()) - 1) < 1e-5 for k in maps)  # pooling maps


def test_overlay_explains_what_a_model_needs(tmp_path, capsys):
    photo = sample_path(sample_photos()[0])
    code = main(["overlay", str(photo), "--model", "official-cbam", "-o", str(tmp_path / "o.png")])
    assert code == 2 and "download by hand" in capsys.readouterr().err
    code = main(["overlay", str(photo), "--model", "timm/nope", "--weights", "none"])
    assert code == 2 and "timm has no model 'nope'" in capsys.readouterr().err


def _overlay_args(photo, *more):
    return ["overlay", str(photo), "--model", "mobilenet_v3_small", "--weights", "none", *more]


def test_bad_paths_and_arguments_fail_fast_with_a_message(tmp_path, capsys, monkeypatch):
    import attnviz.zoo

    photo = sample_path(sample_photos()[0])
    loads = []
    monkeypatch.setattr(attnviz.zoo, "get_model", lambda *a, **k: loads.append(a))
    same = ["-o", str(tmp_path / "same.png"), "--npz", str(tmp_path / "same.png")]
    cases = [
        (_overlay_args(tmp_path / "none.jpg", "-o", str(tmp_path / "o.png")), "no image file at"),
        (_overlay_args(tmp_path, "-o", str(tmp_path / "o.png")), "is a folder, not an image"),
        (_overlay_args(photo, "-o", str(tmp_path / "missing" / "o.png")), "no folder"),
        (_overlay_args(photo, "-o", str(tmp_path / "o.txt")), "not an image file name"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert loads == []  # refused before any model was built
    monkeypatch.undo()
    # --npz same.png writes same.png.npz, and says so
    assert main(_overlay_args(photo, *same, "--size", "64")) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'same.png.npz'}" in out and (tmp_path / "same.png.npz").exists()
    assert main(_overlay_args(photo, "--target", "-1", "-o", str(tmp_path / "t.png"))) == 2
    assert "--target must be a class index in [0, 1000), got -1" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["thin", "big"])
def test_hostile_images_through_the_cli_are_refused_cheaply(tmp_path, name):
    """The issue's reproductions, run as a user runs them: a fresh process, its peak RSS."""
    import subprocess
    import sys

    path = tmp_path / f"{name}.png"
    Image.new("L", (3, 100_000) if name == "thin" else (13_000, 13_000)).save(path)
    argv = ["overlay", str(path), "--weights", "none", "-o", str(tmp_path / "o.png")]
    code = (
        "import resource, sys\n"
        "from attnviz.cli import main\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"code = main({argv!r})\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(code, grown // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    status, grown_mib = done.stdout.split()
    assert status == "2" and int(grown_mib) < 100
    assert "attnviz accepts" in done.stderr and "Traceback" not in done.stderr


def test_overlay_of_a_vit_writes_class_token_attention_and_rollout(tmp_path):
    """The CLI's maps equal an independent forward: the last block's class-token row, the
    rollout of every block."""
    import torch

    from attnviz import capture, maps
    from attnviz.photos import prepare
    from attnviz.zoo import pretrained

    photo = sample_path("chelsea")
    torch.manual_seed(0)
    out, npz = tmp_path / "vit.png", tmp_path / "vit.npz"
    code = main(
        [
            "overlay",
            str(photo),
            "--model",
            "timm/vit_tiny_patch16_224",
            "--weights",
            "none",
            "--size",
            "96",
            "--head",
            "1",
            "-o",
            str(out),
            "--npz",
            str(npz),
        ]
    )
    assert code == 0 and Image.open(out).width > 3 * 90
    data = np.load(npz)
    torch.manual_seed(0)
    pre = pretrained("timm/vit_tiny_patch16_224", weights=None)
    with torch.no_grad(), capture(pre.model) as rec:
        pre.model(prepare(photo, pre.transforms))
    last = rec["blocks.11.attn"].matrix[0].mean(0)  # heads averaged
    np.testing.assert_allclose(data["map/blocks.11.attn"].ravel(), last[0, 1:].numpy(), atol=1e-6)
    np.testing.assert_allclose(data["map/rollout"], maps.rollout_map(rec)[0].numpy(), atol=1e-6)
    assert data["self/blocks.0.attn"].shape == (3, 197, 197)


def test_overlay_of_a_botnet_and_a_bad_head(tmp_path, capsys):
    photo = sample_path("coffee")
    out = tmp_path / "bot.png"
    code = main(
        [
            "overlay",
            str(photo),
            "--model",
            "timm/botnet26t_256",
            "--weights",
            "none",
            "--size",
            "96",
            "--head",
            "3",
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()
    code = main(
        [
            "overlay",
            str(photo),
            "--model",
            "timm/botnet26t_256",
            "--weights",
            "none",
            "--head",
            "99",
            "-o",
            str(out),
        ]
    )
    assert code == 2 and "--head must be in [0, 4)" in capsys.readouterr().err


def test_the_gallery_embeds_and_links_the_pages_a_notebook_exports(tmp_path):
    """A notebook that shares an explorer: its page in the gallery holds the interactive
    page itself (a sandboxed frame), and the index links the exported file."""
    src = tmp_path / "nbs"
    src.mkdir()
    code = (
        "import torch\nfrom attnviz.widgets import STNInspector\n"
        "app = STNInspector(torch.rand(2, 1, 8, 8), torch.eye(2, 3).expand(2, 2, 3))\n"
        "app.export_html('replay.html')"
    )
    write_notebook(src / "01_shares.ipynb", code)
    write_notebook(src / "02_plain.ipynb", "x = 1")
    out = tmp_path / "gallery"
    assert main(["demo", "--notebooks", str(src), "--out", str(out), "--timeout", "120"]) == 0
    page = (out / "01_shares.html").read_text()
    assert "attnviz-export" in page and "sandbox=" in page and "attnvizFrames" in page
    index = (out / "index.html").read_text()
    assert "<a href='replay.html'>replay.html</a>" in index and (out / "replay.html").exists()
    assert index.count("replay.html</a>") == 1  # the plain notebook exported nothing
