"""The exceptions of xarray_clusterh5 (no dependencies, so every layer and the
light entry point can import them)."""

from __future__ import annotations

import os


class ClusterH5Error(ValueError):
    """A file is not what it should be; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[ClusterH5Error], tuple[str, str]]:
        # rebuilt from path and problem, so the error crosses process
        # boundaries (dask.distributed workers, multiprocessing) intact
        return (type(self), (self.path, self.problem))


class CorruptFileError(ClusterH5Error):
    """Reading a file failed inside HDF5, nibabel or zlib: it is damaged or cut short.

    The message names the file and, where known, the object and what was
    being done; the library's own error is chained (``__cause__``).
    """


class FileLockedError(ClusterH5Error):
    """Another process holds the file open for writing (HDF5 file locking)."""
