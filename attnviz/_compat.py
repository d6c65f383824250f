"""Old names kept working for one release, with a ``FutureWarning`` naming the new one.

attnviz 0.2 settled on one word per concept (docs/ARCHITECTURE.md has the table). Code
written against 0.1 keeps running and is told what to write instead.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _warn(old: str, new: str, where: str) -> None:
    warnings.warn(
        f"{where}: {old!r} was renamed {new!r} in attnviz 0.2; the old name goes in 0.3",
        FutureWarning,
        stacklevel=3,
    )


def renamed_kwargs(**old_to_new: str) -> Callable[[F], F]:
    """Accept each old keyword as its new one (warning once per call); both is an error."""

    def decorate(fn: F) -> F:
        where = getattr(fn, "__qualname__", fn.__name__).replace(".__init__", "()")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{where}: pass {new}= only ({old}= is its old name)")
                    _warn(old, new, where)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def module_getattr(
    module: str, renamed: Mapping[str, tuple[str, Callable[[], Any]]]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving old names: {old: (new, getter of the new object)}."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new, get = renamed[name]
            _warn(name, new, module)
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
