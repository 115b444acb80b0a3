"""xarray_clusterh5: fmristore clustered fMRI and ModelArray HDF5 in xarray.

Open files with ``xr.open_dataset(path, engine="clusterh5")`` (or
``xr.open_datatree``); the ``.clusterh5`` accessor on Datasets and DataTrees
gives the fmristore and ModelArray operations. Nothing heavy is imported here
(not even xarray or NumPy): public functions load their module on first use and
the accessors register when xarray is imported, so the engine's entry point and
the ``clusterh5`` command start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from xarray_clusterh5 import _accessor_hook
from xarray_clusterh5.errors import ClusterH5Error, CorruptFileError, FileLockedError

_accessor_hook.install()

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "open_dataset": "xarray_clusterh5.api",
    "open_datatree": "xarray_clusterh5.api",
    "open_groups": "xarray_clusterh5.api",
    "example_file": "xarray_clusterh5.api",
    "write_experiment": "xarray_clusterh5.fmristore.write",
    "Run": "xarray_clusterh5.fmristore.write",
    "to_fmristore": "xarray_clusterh5.fmristore.to_h5",
    "from_nifti": "xarray_clusterh5.fmristore.from_nifti",
    "from_cohort": "xarray_clusterh5.modelarray.cohort",
    "to_modelarray": "xarray_clusterh5.modelarray.cohort",
    "lm": "xarray_clusterh5.modelarray.lm",
    "merge_results": "xarray_clusterh5.modelarray.lm",
    "write_results": "xarray_clusterh5.modelarray.lm",
    "open_subjects": "xarray_clusterh5.subjects",
    "open_subjects_datatree": "xarray_clusterh5.subjects",
}

__all__ = [
    "ClusterH5Error",
    "CorruptFileError",
    "FileLockedError",
    "__version__",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xarray_clusterh5' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
