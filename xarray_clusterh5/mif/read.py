"""Reading ``.mif`` / ``.mif.gz`` data in MRtrix's logical voxel order.

:func:`read_mif` returns the array indexed as MRtrix tools see the image
(``mrconvert -strides 1,2,3,...``): the ``layout`` strides are undone (axes
permuted back, reversed axes flipped), the byte order is native and, with
``scaled=True``, ``scaling: offset,multiplier`` is applied in float64 (as
MRtrix and ModelArrayIO do). No h5py or xarray here.
"""

from __future__ import annotations

import os

import numpy as np

from xarray_clusterh5._hdf5.deflate import read_file
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.mif.header import MifHeader, parse_header


def disk_to_logical(flat: np.ndarray, h: MifHeader) -> np.ndarray:
    """Undo the layout: a view (no copy) indexed in MRtrix's logical order."""
    ndim = len(h.dim)
    slow_to_fast = sorted(range(ndim), key=lambda a: -h.order[a])
    data = flat.reshape([h.dim[a] for a in slow_to_fast])
    data = data.transpose([slow_to_fast.index(a) for a in range(ndim)])
    flips = tuple(slice(None, None, -1) if r else slice(None) for r in h.reversed_axes)
    return data[flips]


def logical_to_disk(data: np.ndarray, h: MifHeader) -> np.ndarray:
    """The inverse of :func:`disk_to_logical`: 1-D, in on-disk order."""
    flips = tuple(slice(None, None, -1) if r else slice(None) for r in h.reversed_axes)
    slow_to_fast = sorted(range(len(h.dim)), key=lambda a: -h.order[a])
    return np.ascontiguousarray(data[flips].transpose(slow_to_fast)).ravel()


def raw_values(h: MifHeader, raw: bytes | None = None) -> np.ndarray:
    """The stored values of a file in on-disk order (1-D, file's dtype)."""
    if raw is None:
        raw = read_file(h.path)
    nbytes = h.n_values * h.dtype.itemsize
    if h.data_offset + nbytes > len(raw):
        raise ClusterH5Error(
            h.path,
            f"truncated: {h.n_values} {h.dtype} values need {nbytes} bytes at "
            f"offset {h.data_offset}, the file has {len(raw)} bytes",
        )
    return np.frombuffer(raw, dtype=h.dtype, count=h.n_values, offset=h.data_offset)


def apply_scaling(values: np.ndarray, h: MifHeader) -> np.ndarray:
    """``offset + multiplier * value`` in float64 when the header scales."""
    if h.scaling is None or h.scaling == (0.0, 1.0):
        return values
    return values.astype(np.float64) * h.scaling[1] + h.scaling[0]


def read_mif(
    path: str | os.PathLike[str], *, scaled: bool = True
) -> tuple[MifHeader, np.ndarray]:
    """Header and data of a ``.mif`` / ``.mif.gz`` file, in logical order.

    The data keep their stored type (native byte order) unless ``scaled`` and
    the header has a ``scaling`` line, which gives float64.

    Raises
    ------
    ClusterH5Error
        Not a MIF file, data in a separate file, ``Bit`` data, truncated data.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such file")
    raw = read_file(p)
    h = parse_header(p, raw)
    values = raw_values(h, raw)
    values = values.astype(values.dtype.newbyteorder("="), copy=False)
    if scaled:
        values = apply_scaling(values, h)
    return h, disk_to_logical(values, h)


def read_values(path: str, h: MifHeader | None = None) -> np.ndarray:
    """Every value of a file as 1-D float32 in logical C order (fixel data).

    Values are scaled in float64 first when the header says so, then cast, as
    ModelArrayIO's ``get_fdata(dtype=float32)`` does. Complex data is refused.
    """
    raw = read_file(path)
    if h is None:
        h = parse_header(path, raw)
    if h.dtype.kind == "c":
        raise ClusterH5Error(path, "complex MIF data cannot be read as scalars")
    values = apply_scaling(raw_values(h, raw), h)
    return np.ascontiguousarray(disk_to_logical(values, h), dtype=np.float32).ravel()


def read_range(path: str, h: MifHeader, start: int, stop: int) -> np.ndarray:
    """Values ``start:stop`` (logical order) of an uncompressed image with one
    non-singleton axis (fixel data), as float32, reading only those bytes.

    Same values as ``read_values(path)[start:stop]``; a reversed axis is read
    mirrored and flipped.
    """
    axes = [a for a, d in enumerate(h.dim) if d > 1]
    if len(axes) > 1:
        raise ValueError(
            f"{path}: read_range needs one non-singleton axis, dim {h.dim}"
        )
    n = h.n_values
    if not 0 <= start <= stop <= n:
        raise IndexError(f"{path}: range {start}:{stop} outside 0:{n}")
    rev = any(h.reversed_axes[a] for a in axes)  # (a one-value image reads the same)
    lo = n - stop if rev else start
    item = h.dtype.itemsize
    with open(path, "rb") as fh:
        raw = os.pread(fh.fileno(), (stop - start) * item, h.data_offset + lo * item)
    if len(raw) != (stop - start) * item:
        raise ClusterH5Error(path, "truncated: the file ends inside the data")
    values = apply_scaling(np.frombuffer(raw, dtype=h.dtype), h)
    if rev:
        values = values[::-1]
    return np.asarray(values, dtype=np.float32)
