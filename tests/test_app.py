"""The attnviz app: every explorer on the shipped models, one tab each, served by Voila."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import torch
from labtools import free_port

from attnviz import app as appmod
from attnviz import cli, shipped
from attnviz.widgets import (
    ChannelExplorer,
    PhotoExplainer,
    QueryExplorer,
    SpatialExplorer,
    STNInspector,
)


@pytest.fixture(scope="module")
def explorers():
    a = appmod.explorers(photo_weights=None, images=8)
    yield a
    a.close()


def test_opens_on_the_first_tab_and_builds_the_others_when_opened(explorers):
    assert explorers.built == ["Spatial transformer"]
    assert [explorers.tabs.get_title(i) for i in range(len(appmod.TABS))] == list(appmod.TABS)
    explorers.tabs.selected_index = appmod.TABS.index("SE channels")
    assert explorers.built == ["Spatial transformer", "SE channels"]
    assert isinstance(explorers.explorer("SE channels"), ChannelExplorer)
    caption = explorers.tabs.children[1].children[0].value
    assert f"{shipped.entry('resnet10_se')['test_accuracy']:.1%}" in caption


@pytest.mark.parametrize(
    "tab, kind",
    [
        ("Spatial transformer", STNInspector),
        ("SE channels", ChannelExplorer),
        ("CBAM spatial maps", SpatialExplorer),
        ("Non-local attention", QueryExplorer),
        ("Transformer attention", QueryExplorer),
        ("Photos", PhotoExplainer),
    ],
)
def test_every_explorer_is_there(explorers, tab, kind):
    explorer = explorers.explorer(tab)
    assert isinstance(explorer, kind)
    assert explorers.tabs.children[appmod.TABS.index(tab)].children[1] is explorer.root


def test_the_explorers_show_the_shipped_models(explorers):
    se = explorers.explorer("SE channels")
    reference = shipped.load("resnet10_se")
    assert all(
        torch.equal(a, b)
        for a, b in zip(se.model.state_dict().values(), reference.state_dict().values())
    )
    stn = explorers.explorer("Spatial transformer")
    assert torch.equal(stn.thetas, shipped.history("stcnn_rts").snapshot("stn"))
    with pytest.raises(KeyError, match="the tabs are"):
        explorers.explorer("nope")


def test_the_page_notebook_and_the_voila_command(tmp_path):
    page = appmod.notebook(tmp_path / "p.ipynb", photo_weights=None)
    nb = nbformat.read(page, as_version=4)
    assert [c.source for c in nb.cells] == [
        "from attnviz.app import explorers\n\nexplorers(photo_weights=None)"
    ]
    seen = {}

    def run(cmd, cwd, env):
        seen["cmd"], seen["page"] = cmd, nbformat.read(f"{cwd}/attnviz.ipynb", as_version=4)
        template = Path(env["JUPYTER_PATH"].split(os.pathsep)[0]) / "voila/templates"
        seen["template"] = (template / "attnviz-offline/index.html.j2").read_text()
        return 0

    port = free_port()
    assert appmod.serve(port=port, photo_weights=None, run=run) == 0
    cmd = seen["cmd"]
    # Voila, through attnviz/_server.py (its kernel manager and Host check), on that port only
    assert Path(cmd[1]).name == "_server.py" and Path(cmd[2]).name == "attnviz.ipynb"
    assert "--Voila.ip=127.0.0.1" in cmd and f"--port={port}" in cmd
    assert "--Voila.port_retries=0" in cmd
    assert "--strip_sources=True" in cmd and "--no-browser" in cmd
    assert "--template=attnviz-offline" in cmd
    assert "{%- block notebook_css -%}" in seen["template"] and "https://" not in seen["template"]


def test_cli_app_reports_missing_models(tmp_path, capsys):
    assert cli.main(["app", "--models", str(tmp_path)]) == 2
    assert "attnviz models --regenerate" in capsys.readouterr().err
