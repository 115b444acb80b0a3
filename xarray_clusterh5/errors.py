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
