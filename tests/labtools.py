"""Real JupyterLab in headless Chromium.

``LabServer`` serves a temporary folder on 127.0.0.1 with its own Jupyter
config, data and runtime folders; ``LabBrowser`` drives Debian's Chromium with
Playwright, aborts every request that is not for 127.0.0.1 and records it.
Both always clean up: the server, its kernels and the browser are stopped in
``close()`` even after a failure.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

CHROMIUM = os.environ.get("ATTNVIZ_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


class LabServer:
    def __init__(self, root: Path, home: Path, timeout: float = 120) -> None:
        self.root, self.token = root, secrets.token_hex(16)
        env = _isolated_env(home)
        notes = home / "settings" / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True, exist_ok=True)
        (notes / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        # render every cell: windowed (virtual) notebooks re-measure cells while scrolling,
        # which moves an output between finding it and screenshotting it
        tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True, exist_ok=True)
        (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        env["OMP_NUM_THREADS"] = "1"  # kernels share 2 cores with the browser and server
        self.runtime = home / "runtime"
        self.log = open(home / "lab.log", "w")  # closed in close()
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--port=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
            "--LabApp.news_url=None",
            "--LabApp.expose_app_in_browser=True",
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.url = self._wait_for_url(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        info = self.runtime / f"jpserver-{self.proc.pid}.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.proc.returncode}; see {self.log.name}"
                )
            if info.exists():
                try:
                    port = json.loads(info.read_text())["port"]
                    return f"http://127.0.0.1:{port}"
                except (ValueError, KeyError):
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"jupyter lab did not start within {timeout} s; see {self.log.name}")

    def close(self) -> None:
        _stop(self.proc)
        self.log.close()


def _isolated_env(home: Path) -> dict[str, str]:
    """The environment with Jupyter's config, data and runtime folders under ``home``."""
    env = dict(os.environ)
    for var, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "mpl"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
    ]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    return env


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a server and every process it started (kernels), killing stragglers."""
    try:
        parent = psutil.Process(proc.pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """``attnviz app`` (Voila) on a free port of 127.0.0.1, photo tab without downloads."""

    def __init__(self, home: Path, timeout: float = 120) -> None:
        import urllib.request

        env = _isolated_env(home)
        env["OMP_NUM_THREADS"] = "1"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(home / "app.log", "w")  # closed in close()
        cmd = [
            sys.executable,
            "-m",
            "attnviz.cli",
            "app",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--no-download",
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"attnviz app exited with {self.proc.returncode}; see {self.log.name}"
                    )
                try:
                    with urllib.request.urlopen(self.url + "/voila/static/", timeout=2):
                        break
                except OSError as e:
                    if getattr(e, "code", None) is not None:  # an HTTP answer: it is up
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"attnviz app did not start in {timeout} s; see {self.log.name}"
                    )
                time.sleep(0.3)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        _stop(self.proc)
        self.log.close()


class LabBrowser:
    def __init__(self, profile: Path) -> None:
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise FileNotFoundError(
                f"no Chromium at {CHROMIUM}: install Debian's `chromium` package "
                "(apt-get install chromium) or set ATTNVIZ_CHROMIUM"
            )
        self.blocked: list[str] = []
        self._pw = sync_playwright().start()
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                str(profile),
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            self.context.route("**/*", self._route)
            self.context.set_default_timeout(60_000)
        except BaseException:
            self._pw.stop()
            raise

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "file://")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._pw.stop()


# -- driving a notebook --------------------------------------------------------------------
_PANEL = """(name) => window.jupyterapp && Array.from(window.jupyterapp.shell.widgets('main'))
  .find(w => w.context && w.context.path === name && w.content && w.sessionContext)"""
_KERNEL_IDLE = f"""(name) => {{
  const w = ({_PANEL})(name);
  const k = w && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}}"""
_RUN_ALL = f"""(name) => {{
  const w = ({_PANEL})(name);
  window.jupyterapp.shell.activateById(w.id);
  return window.jupyterapp.commands.execute('notebook:run-all-cells');
}}"""
_ALL_DONE = f"""(name) => {{
  const w = ({_PANEL})(name);
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  return !!k && k.status === 'idle' && cells.every(c => c.model.executionCount !== null);
}}"""
_ERRORS = f"""(name) => {{
  const w = ({_PANEL})(name);
  const out = [];
  w.content.widgets.forEach((c, i) => {{
    if (c.model.type !== 'code') return;
    c.model.outputs.toJSON().forEach(o => {{
      if (o.output_type === 'error') out.push(`cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`);
    }});
  }});
  return out;
}}"""


def open_and_run(page, server: LabServer, name: str, timeout: float = 300) -> None:
    """Open ``name`` in a new workspace, wait for an idle kernel, run all cells, fail on errors."""
    workspace = Path(name).stem.replace("_", "-")
    page.goto(f"{server.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={server.token}")
    page.wait_for_function(_KERNEL_IDLE, arg=name, timeout=120_000, polling=500)
    page.evaluate(_RUN_ALL, name)
    page.wait_for_function(_ALL_DONE, arg=name, timeout=timeout * 1000, polling=500)
    errors = page.evaluate(_ERRORS, name)
    assert not errors, f"{name}: cells raised in the browser: {errors}"


def screenshot(locator, settle: float = 10) -> np.ndarray:
    """The element's pixels, once its position has stopped moving (outputs above it render)."""
    locator.scroll_into_view_if_needed()
    deadline, box = time.monotonic() + settle, None
    while time.monotonic() < deadline:
        now = locator.bounding_box()
        if now is not None and now == box:
            break
        box = now
        time.sleep(0.3)
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def move_slider(slider, steps: int = 1) -> None:
    """Press ArrowRight on a slider's handle (ipywidgets 8 uses noUiSlider)."""
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(steps):
        handle.press("ArrowRight")


def wait_for_change(locator, before: np.ndarray, timeout: float = 30) -> np.ndarray:
    """Poll element screenshots until they differ from ``before`` (redraws are asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = screenshot(locator)
        if now.shape != before.shape or (np.abs(now - before).sum(-1) > 30).any():
            return now
        time.sleep(0.25)
    raise AssertionError("the picture did not change after the slider moved")


def copy_notebooks(sources: list[Path], dest: Path, parameters: dict) -> list[str]:
    """Copy notebooks with ``parameters`` injected (JupyterLab autosaves: never serve the repo)."""
    import nbformat

    from attnviz.nbrun import inject_parameters

    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for src in sources:
        nb = nbformat.read(src, as_version=4)
        inject_parameters(nb, parameters)
        nbformat.write(nb, dest / src.name)
        names.append(src.name)
    return names
