"""The wheel works outside the repository: built from pyproject.toml, installed (not
editable) into a fresh virtual environment in a temporary folder, it finds its sample
photos, and ``attnviz demo`` finds and runs its notebooks.

The fresh environment borrows the test environment's third-party packages through a
``.pth`` line (installing torch again would download gigabytes), and their data files
through ``JUPYTER_PATH``, but not its editable attnviz: the only attnviz it can import
is the wheel's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the borrowed packages' data files (nbconvert's page templates) live under this prefix
    env["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "jupyter")
    out = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(REPO),
        ],
        tmp,
    )
    (wheel,) = (tmp / "dist").glob("attnviz-*.whl")
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp
        ).stdout.strip()
    )
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        tmp,
    )
    return env


def test_the_wheel_ships_photos_models_notebooks_and_type_information(installed, tmp_path):
    py = installed / "bin" / "python"
    code = (
        "import json, attnviz, attnviz.photos as p, attnviz._resources as r\n"
        "import attnviz.shipped as shipped\n"
        "print(json.dumps({'file': attnviz.__file__, 'photos': p.sample_photos(),\n"
        "  'size': p.load_sample('coffee').size, 'notebooks': sorted(\n"
        "  q.name for q in r.notebooks_dir().glob('*.ipynb')),\n"
        "  'typed': (r._PACKAGE / 'py.typed').is_file(),\n"
        "  'models': str(r.models_dir()), 'shipped': sorted(shipped.manifest()['models']),\n"
        "  'loaded': type(shipped.load('resnet10_se')).__name__}))"
    )
    got = json.loads(_run([str(py), "-c", code], tmp_path).stdout)
    assert Path(got["file"]).is_relative_to(installed)  # the wheel's, not the checkout's
    assert got["photos"] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert got["size"][0] > 100
    assert got["notebooks"] == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert got["typed"]
    assert Path(got["models"]).is_relative_to(installed)  # the trained models ship in the wheel
    assert (
        got["shipped"]
        == sorted(json.loads((REPO / "assets/models/manifest.json").read_text())["models"])
        and got["loaded"] == "SmallResNet"
    )


def test_attnviz_demo_runs_a_shipped_notebook(installed, tmp_path):
    out = _run(
        [
            str(installed / "bin" / "attnviz"),
            "demo",
            "--only",
            "02",
            "--out",
            str(tmp_path / "demo"),
        ],
        tmp_path,
        timeout=900,
    )
    assert "02_squeeze_excitation.ipynb (quick) ..." in out.stdout and "ok in" in out.stdout
    index = (tmp_path / "demo" / "index.html").read_text()
    assert (
        "02_squeeze_excitation" in index
        and (tmp_path / "demo" / "02_squeeze_excitation.html").is_file()
    )
    assert not list(installed.rglob("_notebooks/*.png"))  # nothing written inside the package


def test_demo_names_an_unknown_notebook(installed, tmp_path):
    out = subprocess.run(
        [str(installed / "bin" / "attnviz"), "demo", "--only", "99"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2 and "--only ['99']: no such notebook" in out.stderr
