"""Every explorer in one page, on the shipped trained models: the attnviz app.

    attnviz app            # or: make app; serves http://127.0.0.1:8866 with Voila
    attnviz app --port 9000 --no-download

In a notebook, ``attnviz.app.explorers()`` shows the same page, and
``attnviz.app.make_explorer(tab)`` builds one tab's explorer alone (``attnviz export``
writes it as one offline HTML page). One tab per explorer:

- **Spatial transformer**: replay of the RTS ST-CNN's training (theta of 16 test digits
  after every epoch, saved with the model) in the STN inspector;
- **SE channels**: the channel explorer on the SE ResNet-10;
- **CBAM spatial maps**: the spatial explorer (with its every-block overview) on the CBAM
  ResNet-10;
- **Non-local attention**: the query explorer on the non-local ResNet-10;
- **Photos**: the photo explainer over every attention family (trained weights where they
  can be downloaded or are cached; random weights, said so, otherwise).

Tabs build their explorer when first opened, so the page is up in seconds. Voila runs the
page's notebook with its code hidden; the server listens on 127.0.0.1 unless told
otherwise, and the page loads nothing from outside it (Voila's template without its CDN
stylesheet links).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from . import shipped
from .widgets._base import App

__all__ = ["TABS", "ExplorerApp", "explorers", "make_explorer", "notebook", "serve"]

#: the tabs, in order
TABS = (
    "Spatial transformer",
    "SE channels",
    "CBAM spatial maps",
    "Non-local attention",
    "Transformer attention",
    "Photos",
)


def _caption(name: str, folder: Any) -> str:
    e = shipped.entry(name, folder)
    return (
        f"<b>{e['title']}</b>: test accuracy {e['test_accuracy']:.1%} on "
        f"{e['test_images']} test images, trained {e['epochs']} epochs "
        f"(shipped model <code>{name}</code>; recipe in its manifest)"
    )


def make_explorer(
    tab: str, *, folder: Any = None, images: int = 32, photo_weights: str | None = None
) -> tuple[App, str]:
    """The explorer of one tab of the app and its caption (HTML), built on the shipped models.

    Args:
        tab: one of :data:`TABS`.
        folder: where the shipped models are (default: the ones attnviz ships).
        images: test images for the SE, CBAM and non-local explorers (the spatial
            transformer's replay shows the test digits its training snapshots were saved for).
        photo_weights: the photo tab's weights (``"DEFAULT"``: trained, downloaded once;
            ``None``: random weights, nothing downloaded).

    Returns:
        ``(explorer, caption)``; :meth:`~attnviz.widgets._base.App.export_html` of the
        explorer writes it as one offline page (``attnviz export``).

    Raises:
        KeyError: an unknown tab (the message lists the tabs).
        FileNotFoundError: the shipped models are missing.
    """
    from .widgets import (
        ChannelExplorer,
        ModelPicker,
        PhotoExplainer,
        QueryExplorer,
        SpatialExplorer,
        STNInspector,
    )

    if tab not in TABS:
        raise KeyError(f"no tab {tab!r}; the tabs are {', '.join(TABS)}")
    if tab == "Spatial transformer":
        test, hist = shipped.test_data("stcnn_rts"), shipped.history("stcnn_rts", folder)
        snap = hist.snapshot("stn")
        k = snap.shape[1]
        app: App = STNInspector(
            test.images[:k],
            snap,
            epochs=list(range(len(snap))),
            labels=test.labels[:k].tolist(),
            predictions=hist.snapshot("predictions"),
            boxes=test.boxes[:k],
        )
        return app, _caption("stcnn_rts", folder) + ": its training, epoch by epoch"
    if tab == "Photos":
        picker = ModelPicker(weights=photo_weights)
        return PhotoExplainer(picker), "Any photo, any attention family."
    name, make = {
        "SE channels": ("resnet10_se", ChannelExplorer),
        "CBAM spatial maps": ("resnet10_cbam", SpatialExplorer),
        "Non-local attention": ("resnet10_nonlocal", QueryExplorer),
        "Transformer attention": ("vit_small_reg", QueryExplorer),
    }[tab]
    test = shipped.test_data(name)
    model = shipped.load(name, folder=folder)
    kwargs = {} if make is QueryExplorer else {"labels": test.labels[:images].tolist()}
    return make(model, test.images[:images], **kwargs), _caption(name, folder)


class ExplorerApp(App):
    """The explorers on the shipped models, one tab each, each built when first opened.

    Args:
        folder: where the shipped models are (default: the ones attnviz ships).
        photo_weights: the photo tab's weights (``"DEFAULT"``: trained, downloaded once;
            ``None``: random weights, nothing downloaded).
        images: test images per explorer.

    ``explorer(tab)`` builds (if need be) and returns the explorer of a tab.
    """

    def __init__(
        self, *, folder: Any = None, photo_weights: str | None = "DEFAULT", images: int = 32
    ) -> None:
        shipped.manifest(folder)  # a clear error now if the models are missing
        self.folder, self.photo_weights, self.n = folder, photo_weights, images
        self._built: dict[str, App] = {}
        self.log = widgets.Output()
        self.tabs = widgets.Tab(children=[widgets.VBox() for _ in TABS])
        for i, title in enumerate(TABS):
            self.tabs.set_title(i, title)
        self.tabs.observe(self._guard(lambda change: self._open(change["new"])), "selected_index")
        head = widgets.HTML(
            "<h2 style='margin:0.2em 0'>attnviz: attention inside image networks</h2>"
            "Models trained by the notebooks' recipes and shipped with attnviz. Each tab is "
            "one explorer; move its sliders."
        )
        self.root = widgets.VBox([head, self.tabs, self.log])
        self.tabs.selected_index = 0
        self._open(0)

    def _make(self, tab: str) -> tuple[App, str]:
        return make_explorer(
            tab, folder=self.folder, images=self.n, photo_weights=self.photo_weights
        )

    @property
    def built(self) -> list[str]:
        """The tabs whose explorer has been built (opened), in the order they were opened."""
        return list(self._built)

    def explorer(self, tab: str) -> App:
        """The explorer of ``tab`` (one of :data:`TABS`), built on first use."""
        if tab not in TABS:
            raise KeyError(f"no tab {tab!r}; the tabs are {', '.join(TABS)}")
        if tab not in self._built:
            app, caption = self._make(tab)
            self._built[tab] = app
            self.tabs.children[TABS.index(tab)].children = (widgets.HTML(caption), app.root)
        return self._built[tab]

    def _open(self, index: int | None) -> None:
        if index is not None:
            self.explorer(TABS[index])

    def _release(self) -> None:
        for app in self._built.values():
            app.close()  # closes its widgets too
        self._built.clear()


def explorers(**kwargs: Any) -> ExplorerApp:
    """The app in a notebook cell (arguments as for :class:`ExplorerApp`)."""
    return ExplorerApp(**kwargs)


def notebook(
    path: str | os.PathLike, *, photo_weights: str | None = "DEFAULT", folder: Any = None
) -> Path:
    """Write the one-cell notebook Voila serves (the code cell is hidden by Voila)."""
    import nbformat

    args = f"photo_weights={photo_weights!r}" + (f", folder={str(folder)!r}" if folder else "")
    nb = nbformat.v4.new_notebook()
    code = f"from attnviz.app import explorers\n\nexplorers({args})"
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = Path(path)
    nbformat.write(nb, path)
    return path


def _offline_template(root: Path) -> str:
    """A Voila template that is Voila's own ``lab`` template without its two stylesheet
    links to a CDN (Font Awesome, which Voila's bundle already carries), so the page
    loads nothing from outside this machine. Written under ``root`` (a ``JUPYTER_PATH``
    entry); returns the template's name."""
    from jupyter_core.paths import jupyter_path

    name = "attnviz-offline"
    for base in jupyter_path("voila", "templates", "lab"):
        index = Path(base) / "index.html.j2"
        if index.is_file():
            break
    else:
        raise FileNotFoundError("Voila's 'lab' template was not found: reinstall voila")
    lines = index.read_text(encoding="utf-8").splitlines(keepends=True)
    folder = root / "voila" / "templates" / name
    folder.mkdir(parents=True)
    (folder / "index.html.j2").write_text(
        "".join(line for line in lines if "https://" not in line), encoding="utf-8"
    )
    (folder / "conf.json").write_text('{"base_template": "lab"}\n', encoding="utf-8")
    return name


def serve(
    *,
    port: int = 8866,
    ip: str = "127.0.0.1",
    open_browser: bool = False,
    photo_weights: str | None = "DEFAULT",
    folder: Any = None,
    run: Callable[..., Any] = subprocess.call,
) -> int:
    """Serve the app with Voila until interrupted; returns Voila's exit status.

    Raises:
        ImportError: Voila is not installed (``pip install 'attnviz[notebooks]'``).
    """
    import importlib.util

    if importlib.util.find_spec("voila") is None:
        raise ImportError("the app runs on Voila: pip install 'attnviz[notebooks]' (or voila)")
    shipped.manifest(folder)
    with tempfile.TemporaryDirectory(prefix="attnviz-app-") as tmp:
        page = notebook(Path(tmp) / "attnviz.ipynb", photo_weights=photo_weights, folder=folder)
        template = _offline_template(Path(tmp) / "share")
        env = dict(os.environ)
        env["JUPYTER_PATH"] = os.pathsep.join(
            [str(Path(tmp) / "share"), *filter(None, [env.get("JUPYTER_PATH")])]
        )
        cmd = [
            sys.executable,
            "-m",
            "voila",
            str(page),
            f"--Voila.ip={ip}",
            f"--port={port}",
            "--strip_sources=True",
            "--theme=light",
            f"--template={template}",
        ]
        if not open_browser:
            cmd.append("--no-browser")
        print(f"attnviz app: http://{ip}:{port}/ (Ctrl-C stops it)", flush=True)
        try:
            return int(run(cmd, cwd=tmp, env=env) or 0)
        except KeyboardInterrupt:
            return 0
