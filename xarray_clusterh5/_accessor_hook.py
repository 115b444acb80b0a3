"""Register the ``.clusterh5`` accessors without importing xarray eagerly.

``import xarray_clusterh5`` must stay cheap: the ``clusterh5`` command and the
engine's entry point import the package, and most CLI conversions need neither
xarray nor NumPy. So the accessors are registered when xarray is (or becomes)
imported: at once if it already is, otherwise by a one-shot import hook that
runs after ``import xarray`` finishes (the "when imported" pattern).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

_ACCESSOR = "xarray_clusterh5.accessor"


def _register() -> None:
    importlib.import_module(_ACCESSOR)


class _ThenRegister:
    """Wraps xarray's own loader; registers the accessors after it ran.

    Duck-typed (not an ``importlib.abc`` subclass): importing ``importlib.abc``
    alone costs more than the rest of the package import.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register()


class _WhenXarrayImported:
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname != "xarray":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders take over
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)  # type: ignore[assignment]
        return spec


def install() -> None:
    """Register now if xarray is loaded, else once it has been imported."""
    if "xarray" in sys.modules:
        _register()
    elif not any(isinstance(f, _WhenXarrayImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _WhenXarrayImported())
