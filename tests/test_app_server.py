"""`attnviz app` as a server (attnviz.app.serve, attnviz/_server.py): each test is named
after a finding on the app as it was (kernels leaked on every page load, signals left Voila
and its kernels running, any address and port accepted, a relative models folder broken,
no Host check).

The refusals are checked in-process with Voila's start forbidden (``subprocess.Popen``
raises), so they are fast. The other tests run the real thing, ``python -m attnviz.cli app
--no-download``, on a free port of 127.0.0.1 with Jupyter's folders and TMPDIR under the
test's own folder; they talk only to 127.0.0.1, every wait is bounded, and every process
the app started (even one that outlived it) is stopped in a ``finally``. Each page load
(`GET /`) runs the page's notebook in a kernel: about 6 s on 2 cores, so those tests are
marked slow.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from labtools import _isolated_env, free_port

from attnviz import app as appmod
from attnviz import cli, shipped

PAGE_ERROR = "There was an error when executing cell"
PAGE_TITLE = "attention inside image networks"  # the page's heading, from the executed cell


# -- a real `attnviz app` ------------------------------------------------------------------
class Server:
    """``python -m attnviz.cli app --no-download --port PORT *args`` with its Jupyter
    folders and TMPDIR under ``home``. Every process it starts is remembered
    (:meth:`family`), so :meth:`close` stops them all, also those that outlive it."""

    def __init__(
        self,
        home: Path,
        *args: str,
        cwd: Path | None = None,
        timeout: float = 180,
        serve: str | None = None,
    ):
        """``serve``: instead of the command line, ``attnviz.app.serve(port=PORT,
        photo_weights=None, <serve>)`` in ``python -c``."""
        self.home, self.port = home, free_port()
        self.tmp = home / "tmp"
        env = _isolated_env(home)
        self.tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(self.tmp)
        env["OMP_NUM_THREADS"] = "1"  # kernels share 2 cores with Voila and the tests
        self.log_path = home / "app.log"
        self.log = open(self.log_path, "w")  # closed in close()
        cmd = [sys.executable, "-m", "attnviz.cli", "app", "--no-download"]
        cmd += ["--port", str(self.port), *args]
        if serve is not None:
            call = f"serve(port={self.port}, photo_weights=None, {serve})"
            cmd = [sys.executable, "-c", f"from attnviz.app import serve; {call}"]
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        try:
            self.url = self._wait_for_url(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"attnviz app exited with {self.proc.returncode}: {self.text}")
            found = re.search(r"attnviz app: (http://\S+)", self.text)
            if found and _accepts(self.port):
                self.family()
                return found.group(1)
            time.sleep(0.3)
        raise TimeoutError(f"attnviz app did not start in {timeout} s: {self.text}")

    @property
    def text(self) -> str:
        """What the app printed so far (stdout and stderr)."""
        return self.log_path.read_text()

    def family(self) -> list[psutil.Process]:
        """attnviz and its descendants running now (remembered for :meth:`close`)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            try:
                self.seen.setdefault((p.pid, p.create_time()), p)
            except psutil.Error:
                pass
        return procs

    def kernels(self) -> list[psutil.Process]:
        """The kernels running now (descendants that run ipykernel)."""
        out = []
        for p in self.family():
            try:
                if "ipykernel_launcher" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def rss(self) -> int:
        """Resident memory of attnviz and all its descendants, in bytes."""
        total = 0
        for p in self.family():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def get(self, path: str = "/", host: str | None = None) -> tuple[int, dict, str]:
        return _request("GET", self.port, path, host)

    def close(self) -> None:
        self.family()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        alive = [p for p in self.seen.values() if p.is_running()]
        _, alive = psutil.wait_procs(alive, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.log.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _request(
    method: str, port: int, path: str, host: str | None = None, timeout: float = 300
) -> tuple[int, dict, str]:
    """One request to 127.0.0.1:port (``Host: host`` if given): status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        return response.status, dict(response.getheaders()), body
    finally:
        conn.close()


def _kernel_id(page: str) -> str:
    found = re.search(r'"kernelId": "([0-9a-f-]{36})"', page)
    assert found, "the page names no kernel"
    return found.group(1)


def _kernel(port: int, kernel_id: str) -> dict | None:
    """Voila's model of a kernel (``connections``, ``execution_state``), None if gone."""
    status, _, body = _request("GET", port, f"/api/kernels/{kernel_id}", timeout=30)
    if status == 404:
        return None
    assert status == 200, (status, body)
    return json.loads(body)


def _open_websocket(port: int, kernel_id: str) -> socket.socket:
    """What a page in a browser does: a websocket to its kernel (kept open until closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/kernels/{kernel_id}/channels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout} s)")
        time.sleep(0.3)


def _leftovers(tmp: Path) -> list[str]:
    """The app's temporary folders (its own and Voila's connection files) left in ``tmp``."""
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("attnviz-app-", "voila_")))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app serving the shipped models given as a relative path (``--models models``
    from the folder it is started in)."""
    home = tmp_path_factory.mktemp("app-server")
    (home / "work").mkdir()
    (home / "work" / "models").symlink_to(shipped.models_dir(), target_is_directory=True)
    server = Server(home, "--models", "models", cwd=home / "work")
    try:
        yield server
    finally:
        server.close()


# -- refused before anything starts (fast) -------------------------------------------------
@pytest.fixture
def no_voila(monkeypatch):
    """Starting any process (Voila) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def _refused(capsys, argv: list[str]) -> str:
    assert cli.main(["app", "--no-download", *argv]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("attnviz app: ") and "Traceback" not in out.err, out.err
    assert "http://" not in out.out + out.err, "no URL for an app that did not start"
    return out.err


@pytest.mark.parametrize("port", ["0", "-1", "65536", "99999", "abc", "88.5", ""])
def test_invalid_port_is_refused_not_replaced_by_a_random_one(no_voila, capsys, port):
    err = _refused(capsys, [f"--port={port}"])
    assert "1 to 65535" in err


def test_empty_ip_is_refused_instead_of_binding_every_interface(no_voila, capsys):
    err = _refused(capsys, ["--ip="])
    assert "empty" in err


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "192.0.2.7", "example.org"])
def test_non_loopback_ip_without_allow_remote_is_refused(no_voila, capsys, ip):
    err = _refused(capsys, ["--ip", ip])
    assert "not a loopback address" in err and "--allow-remote" in err


def test_loopback_addresses_are_accepted_and_others_need_allow_remote():
    for ip in ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"]:
        assert appmod.check_ip(ip) == ip.strip("[]")
    assert appmod.check_ip("0.0.0.0", allow_remote=True) == "0.0.0.0"
    with pytest.raises(ValueError, match="empty"):
        appmod.check_ip(" ", allow_remote=True)
    assert appmod.check_port("8866") == appmod.check_port(8866) == 8866
    for bad in [True, 8866.0, None]:
        with pytest.raises(ValueError, match="1 to 65535"):
            appmod.check_port(bad)


@pytest.mark.parametrize("listener", ["127.0.0.1", "0.0.0.0"])
def test_port_in_use_is_refused_naming_the_port(no_voila, capsys, listener):
    with socket.socket() as other:
        other.bind((listener, 0))
        other.listen()
        port = other.getsockname()[1]
        err = _refused(capsys, ["--port", str(port)])
    assert f"port {port} is in use" in err


def test_missing_models_folder_is_refused_naming_its_absolute_path(
    no_voila, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, ["--models", "nope"])
    assert str(tmp_path / "nope") in err


def _dry_run(**kwargs) -> dict:
    """``serve`` up to Voila's command: the command, its page and its voila.json."""
    seen: dict = {}

    def run(cmd, cwd, env):
        seen["cmd"], seen["cwd"] = cmd, cwd
        seen["page"] = nbformat.read(Path(cwd) / "attnviz.ipynb", as_version=4)
        seen["config"] = json.loads((Path(cwd) / "voila.json").read_text())
        return 0

    assert appmod.serve(port=free_port(), photo_weights=None, run=run, **kwargs) == 0
    return seen


def test_relative_models_path_is_given_to_the_page_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(shipped.models_dir(), target_is_directory=True)
    seen = _dry_run(folder="models")
    resolved = str((tmp_path / "models").resolve())
    assert seen["page"].cells[0].source.endswith(f"folder={resolved!r})")


def test_allow_remote_requires_a_token_and_prints_it_in_the_url(capsys):
    seen = _dry_run(ip="0.0.0.0", allow_remote=True)
    token = seen["config"]["Voila"]["token"]
    assert len(token) >= 24 and seen["config"]["Voila"]["tornado_settings"] == {
        "allow_remote_access": True
    }
    assert f"/?token={token} " in capsys.readouterr().out
    mine = _dry_run(ip="0.0.0.0", allow_remote=True, token="mine")["config"]["Voila"]
    assert mine["token"] == "mine"
    with pytest.raises(ValueError, match="token is required"):
        _dry_run(ip="0.0.0.0", allow_remote=True, token="")
    local = _dry_run()["config"]["Voila"]
    assert "token" not in local
    assert local["tornado_settings"] == {
        "allow_remote_access": False,
        "local_hostnames": ["localhost"],
    }


def test_voila_never_moves_to_another_port_and_culls_idle_kernels():
    cmd = _dry_run()["cmd"]
    assert "--Voila.port_retries=0" in cmd
    assert "--MappingKernelManager.cull_idle_timeout=120" in cmd
    assert "--MappingKernelManager.cull_connected=False" in cmd


def test_kernels_no_page_uses_are_released_but_the_newest_and_open_pages_kept():
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from attnviz._server import PageKernelManager

    now = datetime.now(timezone.utc)
    km = PageKernelManager()
    kernels = {  # id: (execution_state, websocket connections, seconds since last activity)
        "old": ("idle", 0, 100),
        "shown": ("idle", 1, 100),  # a page in a browser
        "running": ("busy", 0, 100),  # running a page's notebook for a request
        "starting": ("starting", 0, 100),
        "previous": ("idle", 0, 5),
        "newest": ("idle", 0, 2),  # its page may still be opening its websocket
        "dead": ("dead", 0, 50),
    }
    for kid, (state, connections, age) in kernels.items():
        km._kernels[kid] = SimpleNamespace(
            execution_state=state, last_activity=now - timedelta(seconds=age)
        )
        km._kernel_connections[kid] = connections
    assert km.unused_kernels(now) == ["previous", "dead", "old"]
    later = now + timedelta(seconds=km.page_grace)  # the newest is kept only a while
    assert km.unused_kernels(later) == ["newest", "previous", "dead", "old"]


def test_host_check_allows_only_loopback_names_unless_remote_access():
    from attnviz._server import host_is_local

    local = {"allow_remote_access": False, "local_hostnames": ["localhost"]}
    for host in ["localhost", "localhost:8866", "127.0.0.1", "127.0.0.1:8866", "[::1]:8866"]:
        assert host_is_local(host, local), host
    for host in ["evil.example", "evil.example:8866", "192.168.1.10", "localhost.evil", ""]:
        assert not host_is_local(host, local), host
    assert host_is_local("evil.example", {"allow_remote_access": True})


# -- the real server (slow: page loads run the notebook) -----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "192.168.1.10:{port}", "localhost.evil.example"]
)
def test_foreign_host_header_is_refused_with_403(served, host):
    host = host.format(port=served.port)
    for path in ["/", "/api/kernels/0", "/voila/templates/lab/static/voila.js", "/voila/static/"]:
        status, _, _ = served.get(path, host=host)
        assert status == 403, (path, host, status)


@pytest.mark.slow
@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "localhost"])
def test_loopback_host_headers_are_served(served, host):
    status, _, page = served.get("/", host=host.format(port=served.port))
    assert status == 200 and PAGE_TITLE in page


@pytest.mark.slow
def test_relative_models_path_runs_the_page_without_error(served):
    status, _, page = served.get("/")
    assert status == 200
    assert PAGE_ERROR not in page and PAGE_TITLE in page


@pytest.mark.slow
def test_page_load_keeps_the_kernel_of_an_open_page_and_releases_a_closed_one(served):
    _, _, page = served.get("/")
    shown = _kernel_id(page)
    ws = _open_websocket(served.port, shown)
    try:
        _wait(lambda: _kernel(served.port, shown)["connections"] == 1, 30, "no connection")
        for _ in range(2):  # two more page loads, never shown in a browser
            assert served.get("/")[0] == 200
        assert _kernel(served.port, shown) is not None, "the open page lost its kernel"
    finally:
        ws.close()  # the page is closed (or reloaded)
    _wait(lambda: _kernel(served.port, shown)["connections"] == 0, 30, "still connected")
    assert served.get("/")[0] == 200
    _wait(lambda: _kernel(served.port, shown) is None, 30, "the closed page's kernel runs on")
    assert len(served.kernels()) <= 2


@pytest.mark.slow
def test_idle_kernels_without_a_page_are_culled(tmp_path):
    server = Server(tmp_path, serve="cull_idle_timeout=4")
    try:
        assert server.get("/")[0] == 200
        assert len(server.kernels()) == 1
        # idle for 4 s, then found by the culler, which looks every second
        _wait(lambda: not server.kernels(), 30, "the idle kernel was not culled")
        assert "Culling kernels with idle durations > 4 seconds" in server.text
    finally:
        server.close()


@pytest.mark.slow
def test_allow_remote_token_is_enforced_by_voila(tmp_path):
    token = "s3cret-token"
    server = Server(tmp_path, "--ip", "127.0.0.1", "--allow-remote", "--token", token)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/?token={token}"
        status, headers, _ = server.get("/")
        assert status == 403 or (status == 302 and "/login" in headers.get("Location", ""))
        status, headers, _ = server.get("/?token=wrong")
        assert status == 403 or (status == 302 and "/login" in headers.get("Location", ""))
        assert not server.kernels(), "a request without the token started a kernel"
        status, _, page = server.get(f"/?token={token}", host="any.name.example")
        assert status == 200 and PAGE_TITLE in page  # --allow-remote: any Host, with the token
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_stop_signal_leaves_no_process_and_no_temp_folder(tmp_path, signum):
    server = Server(tmp_path)
    try:
        assert server.get("/")[0] == 200  # a kernel runs the page
        family = server.family()
        assert server.kernels() and len(family) >= 3  # attnviz, Voila, the kernel
        assert _leftovers(server.tmp), "the app's temporary folder should exist while it runs"
        server.proc.send_signal(signum)
        assert server.proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive, f"still running after {signum!r}: {alive}"
        assert not _leftovers(server.tmp)
        assert not _accepts(server.port), "something still serves the port"
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_fifty_page_loads_leave_at_most_two_kernels_and_bounded_memory(tmp_path):
    """50 `GET /` in a row (no browser: no websocket ever connects): the kernels alive stay
    at most 2 (the newest and the one before it, kept for a page still opening its
    websocket), and the memory of the process tree does not grow with the page loads.

    Bound: the tree's RSS after the 50th load is at most its RSS after the 3rd (two kernels
    already alive) plus 400 MB. A kernel that ran the page holds about 850 MB here, so one
    leaked kernel breaks the bound, and the old app (a kernel per load, never released)
    would hold some 40 GB; 400 MB leaves room for Voila's own caches and for the kernels'
    RSS varying with what the allocator keeps. The old app is also stopped early: more
    than 3 kernels after a load fails at once (3: one may still be shutting down, in the
    background, when a load completes).
    """
    server = Server(tmp_path)
    try:
        times, base = [], None
        for i in range(1, 51):
            start = time.monotonic()
            status, _, page = server.get("/")
            times.append(time.monotonic() - start)
            assert status == 200 and PAGE_TITLE in page, f"page load {i}: {status}"
            kernels = len(server.kernels())
            assert kernels <= 3, f"{kernels} kernels after {i} page loads: they leak"
            if i == 3:
                base = server.rss()
        _wait(lambda: len(server.kernels()) <= 2, 15, "more than 2 kernels after 50 loads")
        rss = server.rss()
        assert base is not None and rss <= base + 400 * 2**20, (
            f"{rss / 2**20:.0f} MB after 50 loads, {base / 2**20:.0f} MB after 3"
        )
        print(
            f"50 loads: {sum(times) / len(times):.2f} s per GET; RSS "
            f"{base / 2**20:.0f} MB after 3 loads, {rss / 2**20:.0f} MB after 50"
        )
    finally:
        server.close()
