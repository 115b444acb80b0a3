"""Reading NIfTI volumes at chosen voxels, fast and exactly as nibabel does.

A file is read in one go (``.nii.gz`` inflated by one zlib call, which
releases the GIL, so threads read several files at once); the header is parsed
with nibabel and the data taken with ``np.frombuffer`` at ``vox_offset``, then
only the wanted voxels are gathered (by their Fortran-order flat index, NIfTI's
storage order). Unscaled data are cast directly; scaled data go through
nibabel's own scaling (``get_fdata``), so values equal what ModelArrayIO reads.
No h5py or xarray here.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from xarray_clusterh5._hdf5.deflate import read_file
from xarray_clusterh5.errors import ClusterH5Error


@dataclass(frozen=True)
class VolumeInfo:
    """What a NIfTI header says, read without the data."""

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: np.dtype


def _header(path: str, raw: bytes) -> Any:
    import nibabel as nib

    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            return klass.from_fileobj(io.BytesIO(raw), check=False)
        except Exception:
            continue
    raise ClusterH5Error(path, "not a NIfTI-1 or NIfTI-2 image")


def volume_info(path: str | os.PathLike[str]) -> VolumeInfo:
    """Shape, affine and stored dtype of a NIfTI file (header only)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such file")
    quick = _quick_info(p)
    if quick is not None:
        return quick
    try:
        import nibabel as nib

        img: Any = nib.load(p)
        shape = tuple(int(s) for s in img.shape)
        return VolumeInfo(p, shape, np.asarray(img.affine), img.get_data_dtype())
    except Exception as err:
        raise ClusterH5Error(p, f"cannot read the NIfTI header: {err}") from err


def _quick_info(path: str) -> VolumeInfo | None:
    """:func:`volume_info` from the file's first bytes (inflated if gzipped),
    parsed by nibabel's header class; None when that is not enough (then the
    whole image is loaded by nibabel). Checking a cohort's headers this way
    costs a fraction of ``nibabel.load`` per file."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    try:
        if head[:2] == b"\x1f\x8b":
            head = zlib.decompressobj(31).decompress(head, 1 << 14)
        hdr = _header(path, head)
        shape = tuple(int(s) for s in hdr.get_data_shape())
        return VolumeInfo(
            path, shape, np.asarray(hdr.get_best_affine()), hdr.get_data_dtype()
        )
    except Exception:
        return None


def _scaled(hdr: Any) -> bool:
    slope, inter = (float(v) for v in (hdr["scl_slope"], hdr["scl_inter"]))
    return not (
        (np.isnan(slope) or slope in (0.0, 1.0)) and (np.isnan(inter) or inter == 0.0)
    )


def read_voxels(path: str, flat_index: np.ndarray | None = None) -> np.ndarray:
    """Values of a 3-D NIfTI file at Fortran-order flat indices (all if None).

    Returns float64 for scaled files (nibabel's ``get_fdata``), else the stored
    type; callers cast.
    """
    raw = read_file(path)
    hdr = _header(path, raw)
    shape = tuple(int(s) for s in hdr.get_data_shape())
    count = int(np.prod(shape, dtype=np.int64))
    offset = int(hdr.get_data_offset())
    dtype = hdr.get_data_dtype()
    if offset + count * dtype.itemsize > len(raw):
        raise ClusterH5Error(path, "truncated: the file ends inside the data")
    if _scaled(hdr):
        import nibabel as nib

        img = (
            nib.Nifti1Image.from_bytes(raw)
            if hdr["sizeof_hdr"] == 348
            else (nib.Nifti2Image.from_bytes(raw))
        )
        flat = np.asarray(img.get_fdata(), dtype=np.float64).reshape(-1, order="F")
    else:
        flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        flat = flat.astype(dtype.newbyteorder("="), copy=False)
    return flat if flat_index is None else flat[flat_index]
