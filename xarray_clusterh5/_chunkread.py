"""Parallel reading of gzip-chunked datasets (placeholder: serial h5py)."""

from __future__ import annotations

import h5py
import numpy as np


def read_window_parallel(
    dset: h5py.Dataset, selection: tuple[slice, slice]
) -> np.ndarray | None:
    """Return the window, or None when h5py's own reader should be used."""
    return None
