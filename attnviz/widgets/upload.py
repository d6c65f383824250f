"""Pick the photo to explain: one of the sample photos, or your own, uploaded from disk.

``PhotoPicker`` is a Dropdown of :func:`attnviz.photos.sample_photos` beside a
FileUpload (images only, one file; the bytes travel through the kernel connection, no
URL is fetched), a preview and an Output for errors. Every upload goes through
:func:`attnviz.photos.load_image`, so phone photos come out upright and 16-bit, CMYK or
transparent files come out as the RGB a viewer shows. Built only from core ipywidgets 8
widgets and a PNG image, so it renders in JupyterLab, VS Code and Colab, offline.
"""

from __future__ import annotations

import contextlib
import io
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import ipywidgets as widgets
from PIL import Image

from ..photos import (
    ImageLoadError,
    ImageTooLargeError,
    display_copy,
    load_image,
    load_sample,
    sample_photos,
)
from ._base import App

__all__ = ["PhotoPicker"]

_UPLOADED = "(your photo)"


class PhotoPicker(App):
    """A sample photo or an uploaded one, as an RGB PIL image in ``.image``.

    Choosing a sample loads it; uploading a file loads that instead (the dropdown then
    reads "(your photo)"; choosing a sample again switches back). A file that is not an
    image, or is truncated, is reported in the app's Output and the previous photo stays.

    Args:
        samples: the sample names offered; ``None``: all of :func:`sample_photos`.
        value: the sample shown first; ``None``: the first of ``samples`` (if any).
        preview_size: the longer side of the preview, in pixels.
        max_side: if given, photos are shrunk so ``.image``'s longer side is at most this.

    Attributes:
        image: the chosen photo (RGB PIL image), or ``None`` before any.
        source: ``"sample:<name>"`` or ``"upload:<file name>"`` (``None`` before any).
        root: the app's box. log: the Output where errors appear.

    ``controls``: ``sample`` (dropdown), ``upload`` (file upload). ``panels``: ``preview``.

    Raises:
        ValueError: an unknown sample name, or a bad ``preview_size``.
    """

    _CONTROLS: ClassVar[dict[str, str]] = {"sample": "_sample", "upload": "_upload"}

    def __init__(
        self,
        samples: Sequence[str] | None = None,
        *,
        value: str | None = None,
        preview_size: int = 256,
        max_side: int | None = None,
    ) -> None:
        known = sample_photos()
        samples = list(known if samples is None else samples)
        unknown = [s for s in samples if s not in known]
        if unknown:
            raise ValueError(f"unknown sample photo(s) {unknown}; choose from {known}")
        if value is not None and value not in samples:
            raise ValueError(f"value must be one of {samples}, got {value!r}")
        if isinstance(preview_size, bool) or not isinstance(preview_size, int) or preview_size < 1:
            raise ValueError(f"preview_size must be a positive int, got {preview_size!r}")
        self.preview_size, self.max_side = preview_size, max_side
        self.image: Image.Image | None = None
        self.source: str | None = None
        self._callbacks: list[Callable[[Image.Image], Any]] = []
        self._busy = False
        self._build(samples)
        first = value if value is not None else (samples[0] if samples else None)
        if first is not None:
            self._sample.value = first  # fires _on_sample

    def _build(self, samples: list[str]) -> None:
        self._sample = widgets.Dropdown(
            options=[(_UPLOADED, None), *((s, s) for s in samples)],
            value=None,
            description="Sample",
        )
        self._upload = widgets.FileUpload(
            accept="image/*", multiple=False, description="Your photo"
        )
        self._preview_png = widgets.Image(format="png")
        self.log = widgets.Output()
        self.root = widgets.VBox(
            [widgets.HBox([self._sample, self._upload]), self._preview_png, self.log]
        )
        self._sample.observe(self._on_sample, names="value")
        self._upload.observe(self._on_upload, names="value")
        self.root.add_class("attnviz-photo-picker")

    # -- events ----------------------------------------------------------------------------
    def _on_sample(self, change: dict) -> None:
        if self._busy or change["new"] is None:
            return
        name = change["new"]
        if self._try(
            lambda: self._set(load_sample(name, max_side=self.max_side), f"sample:{name}")
        ):
            with self._quiet():
                self._upload.value = ()  # forget the last upload (and its bytes)
            self._notify()

    def _on_upload(self, change: dict) -> None:
        if self._busy or not change["new"]:
            return
        item = change["new"][0]
        data = io.BytesIO(bytes(item["content"]))
        data.name = name = item.get("name") or "the upload"
        if self._try(lambda: self._set(load_image(data, max_side=self.max_side), f"upload:{name}")):
            with self._quiet():
                self._sample.value = None
            self._notify()

    def _try(self, action: Callable[[], None]) -> bool:
        """Run ``action``; report an error in the app's Output. Returns whether it worked."""
        self.log.clear_output()
        try:
            action()
            return True
        except (ImageLoadError, ImageTooLargeError) as e:  # the user's file: what is wrong
            self.log.append_stderr(f"{e}\n")
        except Exception:  # shown in the app's Output, where the user is looking
            self.log.append_stderr(traceback.format_exc())
        return False

    def _set(self, image: Image.Image, source: str) -> None:
        self.image, self.source = image, source
        self._show(self._preview_png, display_copy(image, self.preview_size))

    def _notify(self) -> None:
        assert self.image is not None  # called only after a photo was _set
        for callback in list(self._callbacks):
            try:
                callback(self.image)
            except Exception:  # the user's callback: its traceback goes to the app's Output
                self.log.append_stderr(traceback.format_exc())

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Change a widget's value without acting on it."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    # -- public ------------------------------------------------------------------------------
    def on_change(
        self, callback: Callable[[Image.Image], Any], remove: bool = False
    ) -> Callable[[Image.Image], Any]:
        """Call ``callback(image)`` after every new photo (``remove=True`` unregisters it).

        Errors raised by the callback appear in the app's Output. Returns ``callback``,
        so this works as a decorator.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        if remove:
            self._callbacks.remove(callback)
        else:
            self._callbacks.append(callback)
        return callback

    def _release(self) -> None:
        self._callbacks.clear()
