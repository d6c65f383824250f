"""The Voila side of ``attnviz app``: Voila that keeps only the kernels pages use and checks
the ``Host`` header on every route.

``attnviz.app.serve`` runs this file as a script, ``python .../attnviz/_server.py PAGE
[Voila options]``, which starts Voila (:func:`voila_class`, a subclass of
``voila.app.Voila``) with :class:`PageKernelManager` as its kernel manager. It is run by its
path, not with ``python -m attnviz._server``, so that the Voila process does not import the
``attnviz`` package (and torch with it, about 480 MB that the server never uses); this file
imports nothing of attnviz.

Why a kernel manager: every ``GET /`` makes Voila start a kernel and run the page's
notebook in it; Voila shuts that kernel down only when the page, in a browser, says so
(a request to ``/voila/api/shutdown/<kernel>`` when the page unloads). A request that never
becomes a page in a browser (``curl``, a crawler, a prefetch, a page closed before its
scripts ran) leaves its kernel running for good. jupyter_server's idle culler
(``MappingKernelManager.cull_idle_timeout``, which ``serve`` sets) shuts such kernels down
after minutes; :class:`PageKernelManager` bounds them at once: when it starts a kernel, it
shuts down every kernel that no page uses (idle, with no websocket connection), except the
most recently active one while it may still be a page opening its websocket.

Why a subclass of Voila: Voila's pages, kernel API, websocket and login check the ``Host``
header (jupyter_server's ``JupyterHandler.check_host``) once ``allow_remote_access`` is off
in ``Voila.tornado_settings``, but its static-file routes (``/voila/templates/...``,
``/voila/static/...``, ``/voila/files/...``) are plain tornado handlers that answer any
host; :func:`voila_class` gives them the same check (:func:`host_is_local`), and sets
tornado's ``static_path`` so that jupyter_server's error pages (the 403) render instead of
logging a traceback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # run as a script, this file's folder (the attnviz package) comes first on sys.path,
    # where its modules would shadow top-level modules of the same names (data, testing, ...)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Float

__all__ = ["PageKernelManager", "host_is_local", "main", "voila_class"]


class PageKernelManager(AsyncMappingKernelManager):
    """A kernel manager that shuts down the kernels no page uses when it starts another.

    A kernel is unused when it is idle (not starting, not running the page's notebook) and
    no websocket is connected to it: a page in a browser keeps one open for as long as it is
    shown, and closes it when it is reloaded or closed. The most recently active unused
    kernel is kept for :attr:`page_grace` seconds after its last activity: its page may have
    arrived in a browser that has not opened the websocket yet. So requests in a row (a
    reload loop, ``curl``) leave at most two kernels: the newest and the one before it.
    """

    page_grace = Float(
        10.0,
        config=True,
        help="Seconds after its last activity during which the most recently active "
        "unused kernel is kept (its page may still be opening its websocket).",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._releasing: set[str] = set()
        self._release_tasks: set[asyncio.Future[list[str]]] = set()

    def unused_kernels(self, now: datetime | None = None) -> list[str]:
        """The ids of the kernels no page uses and that are not kept, most recent first.

        Args:
            now: the time to measure :attr:`page_grace` from (default: now, UTC).

        Returns:
            The idle (or dead) kernels without a websocket connection, less the most
            recently active of them if its last activity is under :attr:`page_grace`
            seconds old, less the kernels being shut down already.
        """
        now = now or datetime.now(timezone.utc)
        unused = []
        for kernel_id in self.list_kernel_ids():
            if kernel_id in self._releasing or self._kernel_connections.get(kernel_id, 0) > 0:
                continue
            kernel = self.get_kernel(kernel_id)
            if getattr(kernel, "execution_state", None) not in ("idle", "dead"):
                continue  # starting, or running a page's notebook for a request
            last = getattr(kernel, "last_activity", None)  # set by jupyter_server on start
            if last is not None:
                unused.append((last, kernel_id))
        unused.sort(reverse=True)
        if unused and (now - unused[0][0]).total_seconds() < self.page_grace:
            unused = unused[1:]
        return [kernel_id for _, kernel_id in unused]

    async def release_unused(self) -> list[str]:
        """Shut down every kernel of :meth:`unused_kernels` (together); returns their ids."""
        ids = self.unused_kernels()
        self._releasing.update(ids)
        for kernel_id in ids:
            self.log.info("Shutting down kernel %s: idle, and no page is connected", kernel_id)
        start = time.monotonic()
        try:
            results = await asyncio.gather(
                *(self.shutdown_kernel(kernel_id) for kernel_id in ids), return_exceptions=True
            )
        finally:
            self._releasing.difference_update(ids)
        for kernel_id, result in zip(ids, results):
            if isinstance(result, BaseException):
                self.log.warning("Could not shut down kernel %s: %s", kernel_id, result)
        if ids:
            self.log.info(
                "Released %d unused kernel(s) in %.1f s", len(ids), time.monotonic() - start
            )
        return ids

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: Any = None, **kwargs: Any
    ) -> str:
        """Start a kernel as ``AsyncMappingKernelManager.start_kernel`` does and return its
        id, while the unused kernels are shut down (:meth:`release_unused`, in the
        background: a page load does not wait the second or two a kernel takes to stop)."""
        if kernel_id is None or kernel_id not in self:
            task = asyncio.ensure_future(self.release_unused())
            self._release_tasks.add(task)
            task.add_done_callback(self._release_tasks.discard)
        return await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)

    async def shutdown_all(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Wait for the kernels being released (:meth:`release_unused`), then shut down all
        kernels as ``AsyncMappingKernelManager.shutdown_all`` does."""
        if self._release_tasks:
            await asyncio.gather(*self._release_tasks, return_exceptions=True)
        await super().shutdown_all(*args, **kwargs)


def host_is_local(host: str, settings: dict[str, Any]) -> bool:
    """Whether a request for ``host`` (its ``Host`` header) may be answered, by the rule of
    jupyter_server's ``JupyterHandler.check_host``.

    Args:
        host: the header, with or without a port (``localhost:8866``, ``[::1]:8866``).
        settings: the tornado application's settings: any host is allowed when
            ``allow_remote_access`` is true; otherwise loopback addresses (127.0.0.0/8,
            ::1) and the names in ``local_hostnames`` (default ``["localhost"]``) are.
    """
    if settings.get("allow_remote_access", False):
        return True
    match = re.match(r"^(.*?)(:\d+)?$", host)
    name = match.group(1) if match else host
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name in settings.get("local_hostnames", ["localhost"])


class _HostCheck(web.RequestHandler):
    """Refuses (403) a request whose ``Host`` is not local (:func:`host_is_local`)."""

    def prepare(self) -> Any:
        if not host_is_local(self.request.host, self.settings):
            raise web.HTTPError(403, "Host %s is not allowed", self.request.host)
        return super().prepare()


def _host_checked(handler: type) -> type:
    """``handler``, or for a handler that does not check the ``Host`` header (not a
    ``JupyterHandler``), a subclass of it that does."""
    from jupyter_server.base.handlers import JupyterHandler

    if not isinstance(handler, type) or issubclass(handler, (JupyterHandler, _HostCheck)):
        return handler
    return type(handler.__name__, (_HostCheck, handler), {"__module__": __name__})


def voila_class() -> Any:
    """``voila.app.Voila`` with the ``Host`` check on every route (:func:`host_is_local`;
    Voila's own handlers already have it) and tornado's ``static_path`` set (to
    jupyter_server's static files), without which jupyter_server's error pages fail to
    render."""
    from jupyter_server import DEFAULT_STATIC_FILES_PATH
    from voila.app import Voila  # type: ignore[import-untyped]

    class AttnvizVoila(Voila):
        def init_settings(self) -> dict[str, Any]:
            settings: dict[str, Any] = super().init_settings()
            settings.setdefault("static_path", DEFAULT_STATIC_FILES_PATH)
            return settings

        def init_handlers(self) -> list[Any]:
            return [
                (spec[0], _host_checked(spec[1]), *spec[2:]) if isinstance(spec, tuple) else spec
                for spec in super().init_handlers()
            ]

    return AttnvizVoila


def main(argv: list[str] | None = None) -> None:
    """Run Voila (:func:`voila_class`) with ``argv`` (default: this process's arguments)
    and :class:`PageKernelManager` as its kernel manager, until Voila stops."""
    from traitlets.config import Config

    config = Config()
    config.VoilaConfiguration.multi_kernel_manager_class = PageKernelManager
    voila_class().launch_instance(argv, config=config)


if __name__ == "__main__":
    main()
