"""Every explorer in one page, on the shipped trained models: the attnviz app.

    attnviz app            # or: make app; serves http://127.0.0.1:8866 with Voila
    attnviz app --port 9000 --no-download --models DIR

In a notebook, ``attnviz.app.explorers()`` shows the same page, and
``attnviz.app.make_explorer(tab)`` builds one tab's explorer alone (``attnviz export``
writes it as one offline HTML page). One tab per explorer:

- **Spatial transformer**: replay of the RTS ST-CNN's training (theta of 16 test digits
  after every epoch, saved with the model) in the STN inspector;
- **SE channels**: the channel explorer on the SE ResNet-10;
- **CBAM spatial maps**: the spatial explorer (with its every-block overview) on the CBAM
  ResNet-10;
- **Non-local attention**: the query explorer on the non-local ResNet-10;
- **Transformer attention**: the query explorer on the shipped ViT;
- **Photos**: the photo explainer over every attention family (trained weights where they
  can be downloaded or are cached; random weights, said so, otherwise).

Tabs build their explorer when first opened, so the page is up in seconds. :func:`serve`
runs Voila on the page's notebook (its code hidden), written with Voila's config and an
offline template (Voila's ``lab`` template without its CDN stylesheet links: the page loads
nothing from outside this machine) to a temporary folder:

- it checks everything before Voila starts: the port (1 to 65535, free: Voila is told not
  to move to another one), the address (loopback only, 127.0.0.1 by default, unless
  ``allow_remote``, which requires a token), the models folder (made absolute, since the
  page runs from the temporary folder);
- Voila refuses (403) requests whose ``Host`` header is not ``localhost`` or a loopback
  address (DNS rebinding), unless ``allow_remote``;
- every page load starts a kernel (about 0.5 to 0.9 GB) that runs the page: Voila's kernel
  manager here (attnviz/_server.py) shuts down the kernels that no page uses whenever it
  starts another (keeping the newest a few seconds, for a page still connecting), and
  kernels idle with no page connected are culled after :data:`CULL_IDLE_TIMEOUT` seconds;
- Ctrl-C, SIGTERM and SIGHUP stop Voila and its kernels and remove the temporary folder.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from . import shipped
from .widgets._base import App

__all__ = [
    "TABS",
    "ExplorerApp",
    "check_ip",
    "check_port",
    "explorers",
    "make_explorer",
    "notebook",
    "resolve_folder",
    "serve",
]

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


#: seconds a kernel that no page is connected to may stay idle before Voila's culler
#: (jupyter_server's ``MappingKernelManager``) shuts it down
CULL_IDLE_TIMEOUT = 120

#: the signals that stop the app: Ctrl-C, ``kill``, and the terminal closing
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_SERVER = Path(__file__).with_name("_server.py")  # run by path: see attnviz/_server.py


def check_port(port: int | str) -> int:
    """``port`` as an int, from an int or a string of digits.

    Raises:
        ValueError: not a whole number from 1 to 65535 (the message says why).
    """
    value: Any = port
    if isinstance(port, str):
        value = int(port.strip()) if re.fullmatch(r"\s*[+-]?\d+\s*", port) else None
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"port {port!r} is not a whole number: give one from 1 to 65535")
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range: give a number from 1 to 65535")
    return value


def is_loopback(ip: str) -> bool:
    """Whether ``ip`` is ``localhost`` or a loopback address (127.0.0.0/8, ``::1``; an IPv6
    address may be in brackets)."""
    host = ip.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ip(ip: str, *, allow_remote: bool = False) -> str:
    """The address to listen on, without brackets (``[::1]`` -> ``::1``).

    Args:
        ip: an address or host name.
        allow_remote: allow an address other machines can reach (any but loopback).

    Raises:
        ValueError: ``ip`` is empty, or not a loopback address while ``allow_remote`` is
            false.
    """
    host = (ip or "").strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(
            "the address to listen on is empty: give 127.0.0.1 (this machine only, the "
            "default) or, with --allow-remote, an address of this machine"
        )
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"{ip} is not a loopback address (127.0.0.0/8, ::1, localhost), so other "
            "machines could reach the app there; to serve them on purpose, add "
            "--allow-remote (allow_remote=True), and a token will guard the app"
        )
    return host


def resolve_folder(folder: str | os.PathLike | None) -> Path | None:
    """``folder`` as an absolute path (``~`` expanded, relative to the current directory),
    ``None`` for ``None``: Voila runs the page from a temporary folder, where a relative
    path would point elsewhere.

    Raises:
        FileNotFoundError: there is no folder there.
    """
    if folder is None:
        return None
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"no models folder {path} (given as {str(folder)!r})")
    return path


def check_free(ip: str, port: int) -> None:
    """Refuse a port that another program listens on, by binding ``ip``:``port`` as Voila
    (tornado) would, then letting it go.

    Raises:
        OSError: the port is in use, or may not be listened on (the message names it).
        ValueError: ``ip`` is not an address of this machine (or does not resolve).
    """
    from tornado.netutil import bind_sockets

    try:
        sockets = bind_sockets(port, ip)
    except socket.gaierror as e:
        raise ValueError(f"cannot listen on {ip!r}: {e.strerror or e}") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(
                f"port {port} is in use on {ip} (another program listens there): choose "
                "another port with --port"
            ) from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise OSError(
                f"no permission to listen on port {port} of {ip} (ports under 1024 need "
                "privileges): choose another port with --port"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"{ip} is not an address of this machine") from None
        raise OSError(f"cannot listen on port {port} of {ip}: {e.strerror or e}") from None
    for sock in sockets:
        sock.close()


def app_url(ip: str, port: int, token: str | None = None) -> str:
    """The app's address for a browser: ``ip`` (this machine's name for an unspecified
    address such as 0.0.0.0), ``port`` and, if any, ``?token=``."""
    host = ip
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        pass
    else:
        if address.is_unspecified:
            host = socket.gethostname()
        elif address.version == 6:
            host = f"[{ip}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def voila_config(*, allow_remote: bool, token: str | None) -> dict[str, Any]:
    """The Voila settings ``serve`` writes to ``voila.json`` in Voila's working folder
    (where Voila reads its config first): the ``Host`` check and the token, kept off the
    command line (a token there would show in ``ps``).

    Without ``allow_remote``, ``allow_remote_access`` is off, so a request whose ``Host``
    header is not ``localhost`` or a loopback address gets 403 (DNS rebinding); with it,
    any host is answered and the token guards the app."""
    settings: dict[str, Any] = (
        {"allow_remote_access": True}
        if allow_remote
        else {"allow_remote_access": False, "local_hostnames": ["localhost"]}
    )
    voila: dict[str, Any] = {"tornado_settings": settings}
    if token:
        voila["token"] = token
    return {"Voila": voila}


def voila_command(
    page: Path, *, ip: str, port: int, template: str, workdir: Path, cull_idle_timeout: int
) -> list[str]:
    """The command that runs Voila on ``page`` (through attnviz/_server.py, which gives
    Voila the kernel manager that shuts down the kernels no page uses).

    Voila listens on ``ip``:``port`` and no other port (``port_retries=0``), keeps its
    kernels' connection files under ``workdir``, opens no browser, and culls kernels that
    have been idle with no page connected for ``cull_idle_timeout`` seconds (0: never)."""
    interval = max(1, min(30, cull_idle_timeout // 4))
    return [
        sys.executable,
        str(_SERVER),
        str(page),
        f"--Voila.ip={ip}",
        f"--port={port}",
        "--Voila.port_retries=0",
        "--strip_sources=True",
        "--theme=light",
        f"--template={template}",
        "--no-browser",
        f"--Voila.connection_dir_root={workdir}",
        f"--MappingKernelManager.cull_idle_timeout={cull_idle_timeout}",
        f"--MappingKernelManager.cull_interval={interval}",
        "--MappingKernelManager.cull_connected=False",
    ]


def serve(
    *,
    port: int | str = 8866,
    ip: str = "127.0.0.1",
    open_browser: bool = False,
    photo_weights: str | None = "DEFAULT",
    folder: Any = None,
    allow_remote: bool = False,
    token: str | None = None,
    cull_idle_timeout: int = CULL_IDLE_TIMEOUT,
    stop_timeout: float = 10.0,
    run: Callable[..., Any] | None = None,
) -> int:
    """Serve the app with Voila until it is stopped; returns the exit status.

    Everything is checked before Voila starts: the port, the address, the token, the models
    folder (resolved to an absolute path) and that the port is free. Voila then runs in its
    own session with the app's page, template and config in a temporary folder; the URL is
    printed once Voila listens. Ctrl-C, SIGTERM or SIGHUP stop Voila (SIGTERM, which shuts
    its kernels down), then, after ``stop_timeout`` seconds (at once on a second signal),
    kill it; any process it started that is still running (its kernels) is stopped too
    (found with psutil), and the temporary folder is removed.

    Args:
        port: the port, 1 to 65535 (an int, or a string of digits).
        ip: the address to listen on: loopback only (127.0.0.0/8, ``::1``,
            ``localhost``) unless ``allow_remote``.
        open_browser: open the app in a browser once it is up.
        photo_weights: the photo tab's weights (``"DEFAULT"``: trained, downloaded once;
            ``None``: random weights, nothing downloaded).
        folder: where the shipped models are (default: the ones attnviz ships).
        allow_remote: allow any address, for other machines; a token is then required
            (one is made with ``secrets.token_urlsafe`` unless ``token`` is given) and the
            ``Host`` header is not checked.
        token: require this token (``?token=`` in the printed URL); default none, or a new
            one with ``allow_remote``.
        cull_idle_timeout: seconds after which a kernel that is idle with no page connected
            is shut down (0: never).
        stop_timeout: seconds Voila has to stop after a signal before it is killed.
        run: for tests: called as ``run(command, cwd=..., env=...)`` instead of running and
            supervising Voila; its result is the exit status.

    Returns:
        0 when stopped by a signal; else Voila's exit status (1 if it was killed).

    Raises:
        ValueError: a port or address that is refused, or an empty token with
            ``allow_remote``.
        FileNotFoundError: the models folder or its models are missing.
        OSError: the port is in use or may not be listened on.
        ImportError: Voila is not installed (``pip install 'attnviz[notebooks]'``).
    """
    import importlib.util

    port = check_port(port)
    host = check_ip(ip, allow_remote=allow_remote)
    if allow_remote:
        if token is not None and not token.strip():
            raise ValueError(
                "a token is required with --allow-remote (allow_remote): it cannot be empty"
            )
        token = token or secrets.token_urlsafe(24)
    if not isinstance(cull_idle_timeout, int) or cull_idle_timeout < 0:
        raise ValueError(f"cull_idle_timeout must be an int >= 0, not {cull_idle_timeout!r}")
    folder = resolve_folder(folder)
    shipped.manifest(folder)
    if importlib.util.find_spec("voila") is None:
        raise ImportError("the app runs on Voila: pip install 'attnviz[notebooks]' (or voila)")
    check_free(host, port)
    url = app_url(host, port, token)

    stops: list[int] = []
    previous = {} if run else _catch(STOP_SIGNALS, lambda signum, frame: stops.append(signum))
    tmp = Path(tempfile.mkdtemp(prefix="attnviz-app-"))
    try:
        page = notebook(tmp / "attnviz.ipynb", photo_weights=photo_weights, folder=folder)
        template = _offline_template(tmp / "share")
        (tmp / "voila.json").write_text(
            json.dumps(voila_config(allow_remote=allow_remote, token=token)), encoding="utf-8"
        )
        env = dict(os.environ)
        env["JUPYTER_PATH"] = os.pathsep.join(
            [str(tmp / "share"), *filter(None, [env.get("JUPYTER_PATH")])]
        )
        cmd = voila_command(
            page,
            ip=host,
            port=port,
            template=template,
            workdir=tmp,
            cull_idle_timeout=cull_idle_timeout,
        )
        if run is not None:
            print(f"attnviz app: {url} (Ctrl-C stops it)", flush=True)
            return int(run(cmd, cwd=str(tmp), env=env) or 0)
        if stops:
            return 0
        return _supervise(
            cmd,
            cwd=tmp,
            env=env,
            url=url,
            probe=(_probe_host(host), port),
            open_browser=open_browser,
            stops=stops,
            stop_timeout=stop_timeout,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _restore(previous)


def _probe_host(ip: str) -> str:
    """Where to connect to see that Voila listens on ``ip``."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return ip


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _catch(signals: tuple[int, ...], handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Install ``handler`` for ``signals``; returns the handlers it replaced. Nothing is
    installed outside the main thread (where Python allows no signal handler)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for signum in signals:
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


class _Family:
    """A process's descendants (Voila's kernels), remembered so that they can be stopped
    even once the process is gone (they then have another parent). Needs psutil (installed
    with ipykernel); without it, nothing is remembered."""

    def __init__(self, pid: int) -> None:
        try:
            import psutil  # type: ignore[import-untyped]
        except ImportError:  # pragma: no cover - ipykernel requires psutil
            self.root: Any = None
        else:
            self.root = psutil.Process(pid)
        self.known: dict[tuple[int, float], Any] = {}

    def update(self) -> None:
        """Remember the descendants running now; forget the ones that have ended."""
        if self.root is None:
            return
        import psutil

        self.known = {k: p for k, p in self.known.items() if p.is_running()}
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                self.known.setdefault((p.pid, p.create_time()), p)
            except psutil.Error:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the remembered processes still running; kill those still running
        ``timeout`` seconds later."""
        if self.root is None or not self.known:
            return
        import psutil

        alive = [p for p in self.known.values() if p.is_running()]
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=timeout)


def _supervise(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    url: str,
    probe: tuple[str, int],
    open_browser: bool,
    stops: list[int],
    stop_timeout: float,
) -> int:
    """Run Voila in its own session until it ends or a signal is recorded in ``stops``,
    print ``url`` (and open it) once Voila accepts connections, then stop Voila and
    everything it started (:func:`_stop`)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=os.name == "posix")
    family = _Family(proc.pid)
    listening, updated = False, 0.0
    try:
        while not stops:
            try:
                proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - updated > 2:
                family.update()
                updated = time.monotonic()
            if not listening and _accepts(*probe):
                listening = True
                print(f"attnviz app: {url} (Ctrl-C stops it)", flush=True)
                if open_browser:
                    import webbrowser

                    webbrowser.open(url)
    finally:
        _stop(proc, family, stops, stop_timeout)
    if stops:
        return 0
    if proc.returncode != 0:
        how = (
            f"was killed (signal {-proc.returncode})"
            if proc.returncode < 0
            else f"stopped with exit status {proc.returncode}"
        )
        when = "" if listening else f" before it listened on port {probe[1]}"
        print(
            f"attnviz app: Voila {how}{when}; its messages are above",
            file=sys.stderr,
            flush=True,
        )
        return 1 if proc.returncode < 0 else proc.returncode
    return 0


def _stop(proc: subprocess.Popen, family: _Family, stops: list[int], timeout: float) -> None:
    """Stop Voila: SIGTERM (Voila then shuts its kernels down), SIGKILL to its process
    group after ``timeout`` seconds or at a second signal; then stop every descendant of
    it still running (:class:`_Family`)."""
    if proc.poll() is None:
        family.update()
        first = len(stops)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and len(stops) <= max(first, 1):
            time.sleep(0.1)
        if proc.poll() is None:
            family.update()
            if hasattr(os, "killpg") and os.name == "posix":
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is Voila's
                except ProcessLookupError:
                    pass
            proc.kill()
        proc.wait()
    family.stop()
