"""Committed notebooks: paired with jupytext scripts, free of outputs, runnable in QUICK mode."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbfixtures import write_notebook

from attnviz import shipped
from attnviz.nbrun import NotebookError, execute_notebook, inject_parameters

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
#: notebooks that open on shipped trained models by default (04 uses pretrained networks)
SHIPPED = sorted({nb for recipe in shipped.RECIPES.values() for nb in recipe.notebooks})
#: seconds a notebook may take from start to end in its default mode on a 2-core CPU
#: (to the first explorer: `python benchmarks/run.py --only startup`, target 20 s)
DEFAULT_MODE_SECONDS = 180


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_paired_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    script = path.with_suffix(".py")
    assert script.exists(), f"{path.name} has no paired jupytext script {script.name}"
    paired = jupytext.read(script)
    assert [(c.cell_type, c.source) for c in nb.cells] == [
        (c.cell_type, c.source) for c in paired.cells
    ], f"{path.name} and {script.name} differ: run `jupytext --sync {script}`"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "QUICK" in tagged[0].source
    if path.stem in SHIPPED:
        assert "TRAIN = False" in tagged[0].source, "notebooks open on the shipped models"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_parameters_are_injected_after_the_parameters_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("a = 1"),
        nbformat.v4.new_code_cell("QUICK = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("b = 2"),
    ]
    inject_parameters(nb, {"QUICK": True, "NAME": "x"})
    assert nb.cells[2].source.endswith("QUICK = True\nNAME = 'x'")
    assert nb.cells[3].source == "b = 2"
    with pytest.raises(ValueError, match="tagged 'parameters'"):
        inject_parameters(nbformat.v4.new_notebook(), {"QUICK": True})


def test_a_failing_cell_is_reported_with_its_number(tmp_path):
    path = write_notebook(tmp_path / "broken.ipynb", "1 / 0")
    with pytest.raises(NotebookError) as err:
        execute_notebook(path, {"QUICK": True}, timeout=120, output=tmp_path / "out.ipynb")
    assert err.value.cell == 2 and err.value.ename == "ZeroDivisionError"
    assert (tmp_path / "out.ipynb").exists()


#: the notebooks that export an explorer to one offline page
EXPORTING = {"01_spatial_transformer", "02_squeeze_excitation", "05_self_attention"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_top_to_bottom_in_quick_mode(path, tmp_path):
    """QUICK with TRAIN: every model trained here, one epoch (the training code runs)."""
    out = execute_notebook(
        path,
        {"QUICK": True, "TRAIN": True},
        timeout=600,
        output=tmp_path / path.name,
        cwd=tmp_path,  # what the notebook writes (exported pages) stays out of the repo
    )
    errors = [
        o for c in out.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    widgets = [
        o
        for c in out.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    images = [
        o
        for c in out.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert widgets and images, "a notebook should show at least one widget and one picture"
    exports = [
        o
        for c in out.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "attnviz-export" in "".join(o.get("data", {}).get("text/html", ""))
    ]
    if path.stem in EXPORTING:  # the shared page shows itself (and survives nbconvert)
        assert exports, f"{path.stem} should show its exported page"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_notebook_runs_in_its_default_mode_on_the_shipped_models(name, tmp_path):
    """As a newcomer runs it: no parameters, the shipped models loaded, nothing trained."""
    import time

    path = next(p for p in NOTEBOOKS if p.stem == name)
    start = time.perf_counter()
    out = execute_notebook(
        path, {}, timeout=DEFAULT_MODE_SECONDS, output=tmp_path / path.name, cwd=tmp_path
    )
    seconds = time.perf_counter() - start
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    assert "loading the shipped models" in text and "epoch" not in text.lower()
    assert not [
        o for c in out.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert seconds < DEFAULT_MODE_SECONDS, f"{name} took {seconds:.0f} s in its default mode"


@pytest.mark.slow
def test_the_photo_notebook_takes_a_family_and_a_timm_model_by_name(tmp_path):
    path = next(p for p in NOTEBOOKS if p.stem == "04_photos")
    out = execute_notebook(
        path,
        {
            "QUICK": True,
            "FAMILY": "GCNet",
            "MODEL": "timm/gcresnet33ts.ra2_in1k",
            "CHANNEL_MODEL": "timm/gcresnet33ts",
            "COMPARE": False,
        },
        timeout=600,
        output=tmp_path / "04.ipynb",
    )
    text = "".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", ""))
        for c in out.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "has no channel attention" in text  # GC-ResNet's attention is context pooling
    assert not [
        o for c in out.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
