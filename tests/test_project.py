"""The repository's own set-up: pyproject, environment.yml, Makefile, CI, lint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _req_name(req: str) -> str:
    return re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower()


def test_core_dependencies_have_lower_bounds():
    deps = {_req_name(r): r for r in PYPROJECT["project"]["dependencies"]}
    for name in ["torch", "torchvision", "numpy", "matplotlib", "pillow", "ipywidgets",
                 "jupyterlab", "grad-cam", "tqdm"]:  # fmt: skip
        assert name in deps, f"{name} missing from [project].dependencies"
        assert ">=" in deps[name], f"{deps[name]} should state a lower bound"
        assert "==" not in deps[name] and "<" not in deps[name].replace("<=", ""), deps[name]
    assert ">=8" in deps["ipywidgets"] and ">=4" in deps["jupyterlab"]


def test_extras_cover_notebooks_and_dev():
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = {_req_name(r) for r in extras["dev"]}
    assert {"pytest", "ruff", "jupytext"} <= dev and ({"nbclient", "nbmake"} & dev)
    assert {"ipykernel", "jupytext"} <= {_req_name(r) for r in extras["notebooks"]}


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == PYPROJECT["project"]["name"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # conda supplies only the interpreter and pip; everything else comes from pyproject via pip
    assert {_req_name(d) for d in conda} == {"python", "pip"}
    py = next(d for d in conda if d.startswith("python"))
    assert py.replace(" ", "") == "python" + PYPROJECT["project"]["requires-python"]
    (line,) = pip
    m = re.fullmatch(r"-e \.\[([\w,]+)\]", line)
    assert m, f"environment.yml should pip-install the package itself, got {line!r}"
    assert set(m.group(1).split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])


def test_make_targets_and_ci_entry_point():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile lacks `{target}`"
    assert "ipykernel install" in makefile and "--name attnviz" in makefile
    assert "jupyter lab notebooks/" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it is in the dev extra; run `make test` to set it up")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_table_of_recognised_modules_is_generated():
    """The README's table is markdown_table() of the registry with the recorded errors:
    run `python benchmarks/readme.py` after changing the registry or re-recording."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme", ROOT / "benchmarks" / "readme.py")
    readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme)
    section = readme.registry_section()
    assert section in (ROOT / "README.md").read_text(), "run `python benchmarks/readme.py`"
    assert "| `timm.layers.lambda_layer.LambdaLayer` | refused |" in section
