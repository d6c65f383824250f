"""`attnviz app` under page loads: seconds per `GET /`, live kernels and memory.

The app (`python -m attnviz.cli app --no-download`, Voila through attnviz/_server.py) on a
free port of 127.0.0.1, with Jupyter's folders and TMPDIR in a temporary folder. N page
loads in a row (50; quick: 6), each a plain `GET /` that reads the whole page: Voila starts
a kernel and runs the page's notebook in it (imports torch, builds the first tab's
explorer), and no browser ever connects to the kernel, as with `curl`, a crawler or a
reload loop. Every 10 loads (quick: 2) and at the end: the kernels alive (children of
Voila), the resident memory (RSS) of the whole process tree (attnviz, Voila, kernels) and
the mean seconds per GET since the last row. Finally the app is stopped with SIGTERM: the
seconds it took and the processes and temporary folders it left (both should be none).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import Contention

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "mpl"),
        ("TMPDIR", "tmp"),
    ]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["OMP_NUM_THREADS"] = "1"  # kernels share the cores with Voila
    return env


def _start(home: Path, port: int, timeout: float = 180) -> tuple[subprocess.Popen, object]:
    log = open(home / "app.log", "w")  # closed by the caller
    cmd = [sys.executable, "-m", "attnviz.cli", "app", "--no-download", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(home), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"attnviz app exited with {proc.returncode}; see {log.name}")
        if re.search(r"attnviz app: http://", (home / "app.log").read_text()):
            return proc, log
        time.sleep(0.3)
    raise TimeoutError(f"attnviz app did not start in {timeout} s; see {log.name}")


def _get(port: int) -> tuple[int, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        conn.close()


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _measure(proc: subprocess.Popen) -> dict:
    rss, kernels = 0, 0
    for p in _tree(proc):
        try:
            rss += p.memory_info().rss
            kernels += "ipykernel_launcher" in " ".join(p.cmdline())
        except psutil.Error:
            pass
    return {"kernels": kernels, "rss_mb": rss / 2**20}


def _stop(proc: subprocess.Popen, home: Path) -> dict:
    family = _tree(proc)
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
    _, alive = psutil.wait_procs(family, timeout=10)
    seconds = time.perf_counter() - start
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    left = [
        p.name for p in (home / "tmp").iterdir() if p.name.startswith(("attnviz-app-", "voila_"))
    ]
    return {"exit_status": code, "stop_seconds": seconds, "left_running": len(alive), "left": left}


def run(quick: bool = False) -> dict:
    meter = Contention()
    loads, every = (6, 2) if quick else (50, 10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        home = Path(tmp)
        port = _free_port()
        started = time.perf_counter()
        proc, log = _start(home, port)
        try:
            startup = time.perf_counter() - started
            rows.append({"loads": 0, **_measure(proc), "seconds_per_get": None})
            times: list[float] = []
            for i in range(1, loads + 1):
                status, seconds = _get(port)
                if status != 200:
                    raise RuntimeError(f"GET / answered {status} at load {i}")
                times.append(seconds)
                if i % every == 0 or i == loads:
                    block = times[-(i - rows[-1]["loads"]) :]
                    rows.append(
                        {"loads": i, **_measure(proc), "seconds_per_get": statistics.mean(block)}
                    )
            time.sleep(5)  # kernels being shut down in the background finish
            settled = _measure(proc)
            stopped = _stop(proc, home)
        finally:
            if proc.poll() is None:
                for p in reversed(_tree(proc)):
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
            log.close()
    table = [
        "| page loads (`GET /`) | live kernels | RSS of the process tree | seconds per GET "
        "(mean since the row above) |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = "" if r["seconds_per_get"] is None else f"{r['seconds_per_get']:.2f} s"
        table.append(f"| {r['loads']} | {r['kernels']} | {r['rss_mb']:.0f} MB | {per} |")
    table.append(f"| {loads}, 5 s later | {settled['kernels']} | {settled['rss_mb']:.0f} MB | |")
    return {
        "title": "The app under page loads: kernels, memory, seconds per page",
        "table": "\n".join(table),
        "rows": rows,
        "settled": settled,
        "startup_seconds": startup,
        "seconds_per_get": {
            "mean": statistics.mean(times),
            "median": statistics.median(times),
            "max": max(times),
            "all": times,
        },
        "stop": stopped,
        "notes": [
            f"{loads} sequential `GET /` from one client, no browser (so no websocket ever "
            f"connects to a kernel); the app took {startup:.1f} s to print its URL. Median "
            f"{statistics.median(times):.2f} s per GET (each runs the page's notebook in a "
            "new kernel). SIGTERM to attnviz: exit status "
            f"{stopped['exit_status']} after {stopped['stop_seconds']:.1f} s, "
            f"{stopped['left_running']} process(es) left running, temporary folders left: "
            f"{', '.join(stopped['left']) or 'none'}. " + meter.note()
        ],
    }
