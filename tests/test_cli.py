"""The attnviz command: the demo gallery survives a broken notebook; overlay writes a picture."""

from __future__ import annotations

import nbformat
import numpy as np
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
    assert "FAILED" in index and "deliberately broken" in index and index.count("ok</td>") == 2
    printed = capsys.readouterr()
    assert "cell 2: ValueError: deliberately broken" in printed.out + printed.err
    assert "gallery:" in printed.out


def test_overlay_writes_a_png_and_the_maps(tmp_path):
    photo = sample_path(sample_photos()[0])
    out, npz = tmp_path / "o.png", tmp_path / "maps.npz"
    code = main(["overlay", str(photo), "--model", "mobilenet_v3_small", "--weights", "none",
                 "--size", "96", "-o", str(out), "--npz", str(npz)])  # fmt: skip
    assert code == 0
    img = Image.open(out)
    assert img.width > 3 * 90 and img.height > 90
    data = np.load(npz)
    assert data["gradcam"].shape == (224, 224) and data["probs"].shape == (1000,)
    se = [k for k in data.files if k.startswith("channel/")]
    assert len(se) == 9  # mobilenet_v3_small's SE blocks
    assert np.all((data[se[0]] >= 0) & (data[se[0]] <= 1))
    assert len([k for k in data.files if k.startswith("map/")]) == 9


def test_overlay_refuses_an_unknown_block(tmp_path, capsys):
    photo = sample_path(sample_photos()[0])
    code = main(["overlay", str(photo), "--model", "mobilenet_v3_small", "--weights", "none",
                 "--block", "nope", "-o", str(tmp_path / "o.png")])  # fmt: skip
    assert code == 2 and "no attention block 'nope'" in capsys.readouterr().err


def test_overlay_takes_timm_models_by_name(tmp_path):
    photo = sample_path(sample_photos()[0])
    out, npz = tmp_path / "o.png", tmp_path / "maps.npz"
    code = main(["overlay", str(photo), "--model", "timm/gcresnet33ts", "--weights", "none",
                 "--size", "96", "-o", str(out), "--npz", str(npz)])  # fmt: skip
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
