"""Writing ``.mif`` / ``.mif.gz`` files with a template's geometry.

The header follows MRtrix 3's rules (``mrtrix image`` ... ``file: . OFFSET``
with the data offset a multiple of 4, then ``END``); the data are stored in the
template's layout. Files are written to a temporary name and renamed into
place. No h5py or xarray here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xarray_clusterh5._hdf5.deflate import deflate
from xarray_clusterh5._hdf5.files import atomic_output
from xarray_clusterh5.mif.header import MifHeader, format_header
from xarray_clusterh5.mif.read import logical_to_disk

#: gzip level of ``.mif.gz`` output (nibabel's default, which ModelArrayIO uses)
GZIP_LEVEL = 1  # pragma: no mutate - compression effort only: inflates the same


def mif_bytes(h: MifHeader, data: np.ndarray, dtype: np.dtype | str = "<f4") -> bytes:
    """A whole ``.mif`` file: ``h``'s geometry, ``data`` (logical order), ``dtype``."""
    dt = np.dtype(dtype)
    arr = np.asarray(data)
    if arr.size != h.n_values:
        raise ValueError(
            f"{h.path}: template has {h.n_values} values ({h.dim}), data has {arr.size}"
        )
    disk = logical_to_disk(arr.reshape(h.dim), h).astype(dt)

    return format_header(h, dt) + disk.tobytes()


def gzip_bytes(raw: bytes, level: int = GZIP_LEVEL) -> bytes:
    """gzip-wrapped ``raw`` (one call, releasing the GIL)."""
    return deflate(raw, level, gzip=True)


def write_mif(
    path: str | os.PathLike[str],
    h: MifHeader,
    data: np.ndarray,
    *,
    dtype: np.dtype | str = "<f4",
    overwrite: bool = False,
) -> Path:
    """Write ``data`` with ``h``'s geometry; gzipped when the name ends ``.gz``.

    No ``scaling`` line is written: values are stored as they are.
    """
    target = Path(path)
    raw = mif_bytes(h, data, dtype)
    gz = target.name.endswith(".gz")
    if gz:
        raw = gzip_bytes(raw)
    suffix = ".mif.gz" if gz else ".mif"
    with (
        atomic_output(target, overwrite=overwrite, suffix=suffix) as tmp,
        open(tmp, "wb") as fh,
    ):
        fh.write(raw)
    return target
