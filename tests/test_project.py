"""The repository's own set-up: pyproject, environment.yml, Makefile, CI, lint."""

from __future__ import annotations

import ast
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
    for name in [
        "torch",
        "torchvision",
        "numpy",
        "matplotlib",
        "pillow",
        "ipywidgets",
        "grad-cam",
        "tqdm",
    ]:
        assert name in deps, f"{name} missing from [project].dependencies"
        assert ">=" in deps[name], f"{deps[name]} should state a lower bound"
        assert "==" not in deps[name] and "<" not in deps[name].replace("<=", ""), deps[name]
    assert ">=8" in deps["ipywidgets"]
    assert "jupyterlab" not in deps  # the library never imports it: the notebooks extra has it


def test_extras_cover_notebooks_and_dev():
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = {_req_name(r) for r in extras["dev"]}
    assert {"pytest", "ruff", "jupytext"} <= dev and ({"nbclient", "nbmake"} & dev)
    notebooks = {_req_name(r) for r in extras["notebooks"]}
    assert {"jupyterlab", "ipykernel", "jupytext", "nbformat", "nbclient", "nbconvert"} <= notebooks


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


def _ruff() -> str:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: it is in the dev extra; run `make test` to set it up")
    return ruff


def test_ruff_is_clean():
    result = subprocess.run([_ruff(), "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tree_is_formatted():
    """One formatter for the tree (`ruff format`), and no per-line opt-outs from it."""
    result = subprocess.run(
        [_ruff(), "format", "--check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    opted_out = [f for f in tracked if re.search(r"#\s*fmt:\s*(skip|off)", (ROOT / f).read_text())]
    assert not opted_out, f"formatter opt-outs in {opted_out}"


def test_the_format_check_fails_on_an_unformatted_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = {  'a':1,\n'b' : [1,2,\n3]}\n")
    config = str(ROOT / "pyproject.toml")
    result = subprocess.run(
        [_ruff(), "format", "--check", "--config", config, str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "bad.py" in result.stdout + result.stderr
    subprocess.run(
        [_ruff(), "format", "--config", config, str(bad)], check=True, capture_output=True
    )
    assert bad.read_text() == 'x = {"a": 1, "b": [1, 2, 3]}\n'


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


def _imported_top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


# distribution name -> import name, for what attnviz imports
_IMPORT_NAMES = {"pillow": "PIL", "grad-cam": "pytorch_grad_cam", "scikit-image": "skimage"}
_OPTIONAL = {
    "timm": "timm",
    "nbformat": "notebooks",
    "nbclient": "notebooks",
    "nbconvert": "notebooks",
    "jupyter_core": "notebooks",
    # the app's Voila side (attnviz/_server.py) and its supervisor (attnviz/app.py)
    "voila": "notebooks",
    "jupyter_server": "notebooks",
    "tornado": "notebooks",
    "psutil": "notebooks",
}


def test_core_dependencies_are_what_the_library_imports():
    imported = set().union(*map(_imported_top_level, (ROOT / "attnviz").rglob("*.py")))
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "attnviz"}
    core = {_IMPORT_NAMES.get(n, n) for n in map(_req_name, PYPROJECT["project"]["dependencies"])}
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module in third_party - core:  # imported lazily, and named in an extra
        assert module in _OPTIONAL, f"attnviz imports {module} but no dependency provides it"
        assert any(_req_name(r) == module for r in extras[_OPTIONAL[module]])
    assert core <= third_party, f"core dependencies never imported: {core - third_party}"


def test_every_subpackage_is_in_the_wheel():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "attnviz").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert listed - found == set(mapped)
    for folder in mapped.values():
        assert (ROOT / folder).is_dir()


def test_no_reference_to_documents_outside_the_repository():
    outside = re.compile(
        r"shared/|\b(STYLE|MECHANISMS|PERFORMANCE_NOTES|TIMM_NOTES|"
        r"BROWSER_TESTING|CBAM_OFFICIAL_LAYOUT)(\.md)?\b"
    )
    files = [
        *ROOT.glob("attnviz/**/*.py"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("notebooks/*.py"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("scripts/*.py"),
        *ROOT.glob("docs/*.md"),
        ROOT / "README.md",
        ROOT / "Makefile",
    ]
    hits = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in files
        if f.name != "test_project.py"
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, hits


def test_mypy_is_clean():
    """The type checker passes on the package (configuration in pyproject.toml)."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is in the dev extra: pip install -e '.[dev]'"
    out = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout


def test_the_front_door_loads_only_what_capture_needs():
    """`import attnviz` imports capture's parts; the rest (and torchvision, matplotlib,
    ipywidgets) load on first use."""
    code = (
        "import sys, attnviz\n"
        "heavy = ['torchvision', 'matplotlib', 'ipywidgets', 'pytorch_grad_cam', 'skimage',\n"
        "         'attnviz.shipped', 'attnviz.widgets', 'attnviz.train', 'attnviz.zoo']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "print(attnviz.shipped.__name__, attnviz.obtain.__module__, 'torchvision' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "", f"import attnviz loaded {out[0]}"
    assert out[1] == "attnviz.shipped attnviz.shipped True"


def test_all_lists_what_a_user_calls():
    import attnviz

    assert {"capture", "NonLocal", "TwoStageTransformer", "SpatialTransformer", "obtain"} <= set(
        attnviz.__all__
    )
    assert "token_layout" not in attnviz.__all__  # capture's helper, still importable
    missing = [name for name in attnviz.__all__ if not hasattr(attnviz, name)]
    assert not missing, missing
    assert len(set(attnviz.__all__)) == len(attnviz.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        attnviz.nothing  # noqa: B018
