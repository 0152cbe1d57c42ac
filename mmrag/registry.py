"""A tiny name -> factory registry, shared by encoders, vector stores and generators.

Besides the names registered in the package, a registry given an entry-point group resolves two
kinds of user names, so a user's own part plugs in wherever a built-in one is named
(``--encoder``, ``--store``, ``--generator``, an index's manifest). A name from a network request
must never reach one unchecked (``mmrag.serve.rag.check_generator``): it would import any module.

* ``module:attr`` (``my_encoders:MyEncoder``, ``pkg.mod:make``): imported on first use, found on
  ``sys.path`` (the working directory when run as ``python -m``, or ``$PYTHONPATH``);
* an entry point of the registry's group (``mmrag.encoders``, ``mmrag.stores``,
  ``mmrag.generators``) declared by an installed package.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def is_import_path(name: str) -> bool:
    """``module:attr`` -- a name that imports its factory instead of naming a registered one."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_points: str | None = None):
        """``entry_points``: the group installed packages register their parts in; only a
        registry that has one (the user-facing parts) resolves ``module:attr`` names too."""
        self.kind = kind
        self.entry_points = entry_points
        self._factories: dict[str, Callable[..., T]] = {}
        self._eps: tuple | None = None  # (sys.path, {name: entry point}) last read

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return deco

    def _entry_points(self) -> dict:
        if not self.entry_points:
            return {}
        import sys
        from importlib.metadata import entry_points

        # reading the installed packages' metadata costs ~10 ms, and the server asks per request:
        # read once per import path (a folder added to sys.path may bring packages)
        key = tuple(sys.path)
        cached = self._eps
        if cached is None or cached[0] != key:
            cached = self._eps = (key, {ep.name: ep for ep in entry_points(group=self.entry_points)})
        return cached[1]

    def names(self) -> list[str]:
        """Registered names and installed entry points (``module:attr`` names are not listed)."""
        return sorted(set(self._factories) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        """Whether :meth:`create` can build ``name`` (imports a ``module:attr`` one to tell)."""
        from mmrag.errors import UnknownNameError

        if not isinstance(name, str):
            return False
        try:
            self.factory(name)
        except UnknownNameError:
            return False
        return True

    def factory(self, name: str) -> Callable[..., T]:
        """The factory ``name`` resolves to (see the module docstring), or UnknownNameError."""
        from mmrag.errors import UnknownNameError

        if name in self._factories:
            return self._factories[name]
        ep = self._entry_points().get(name)
        if ep is not None:
            try:
                return ep.load()
            except Exception as e:  # a broken plugin: say which, not a traceback from its import
                raise UnknownNameError(f"{self.kind} {name!r} (entry point {ep.value}) failed to load: {e}") from None
        if not (self.entry_points and is_import_path(name)):
            own = " (or MODULE:NAME of your own)" if self.entry_points else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}{own}") from None
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            raise UnknownNameError(f"{self.kind} {name!r}: cannot import {module!r} ({e}; "
                                   "is its folder on PYTHONPATH?)") from None
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise UnknownNameError(f"{self.kind} {name!r}: module {module!r} has no {attr!r}") from None
        if not callable(obj):
            raise UnknownNameError(f"{self.kind} {name!r} is not a class or function") from None
        return obj

    def create(self, name: str, **kwargs) -> T:
        factory = self.factory(name)
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # no signature to read (a builtin): let the call say
            signature = None
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as e:  # an option it does not take (--gen-opt typo, --encoder-model for a class without it)
                from mmrag.errors import InvalidInputError

                raise InvalidInputError(f"{self.kind} {name!r} does not take these options "
                                        f"({', '.join(sorted(kwargs)) or 'none'}): {e}") from None
        return factory(**kwargs)
