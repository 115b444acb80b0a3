"""Writing result volumes as NIfTI-1 files with a mask's header.

ModelArrayIO's export (26.0.0): the group mask's header with data type
float32, the mask's affine, ``value`` at the mask's voxels and 0 elsewhere.
The header bytes are made once by nibabel (exactly what it writes for such an
image) and reused for every file; each file's data is filled and, for
``.nii.gz``, compressed by one zlib call (which releases the GIL, so files are
written in parallel). No h5py or xarray here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xarray_clusterh5._hdf5.deflate import deflate
from xarray_clusterh5._hdf5.files import atomic_output

#: nibabel's gzip level (``Opener.default_compresslevel``), as ModelArrayIO writes
GZIP_LEVEL = 1


@dataclass(frozen=True)
class VolumeTemplate:
    """Header bytes and geometry of float32 result volumes."""

    header: bytes
    shape: tuple[int, ...]
    flat_index: np.ndarray  # Fortran-order flat index of each element

    @property
    def n_elements(self) -> int:
        return int(self.flat_index.size)


def volume_template(
    mask_path: str | os.PathLike[str], flat_index: np.ndarray
) -> VolumeTemplate:
    """What nibabel writes for ``Nifti1Image(data, mask.affine, mask.header)``
    with the header's data type set to float32 (ModelArrayIO's export)."""
    import nibabel as nib

    mask: Any = nib.load(os.fspath(mask_path))
    header = mask.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.zeros(mask.shape, np.float32), mask.affine, header)
    raw = img.to_bytes()
    offset = len(raw) - int(np.prod(mask.shape)) * 4
    return VolumeTemplate(raw[:offset], tuple(mask.shape), np.asarray(flat_index))


def volume_bytes(t: VolumeTemplate, values: np.ndarray, fill: float = 0.0) -> bytes:
    """A whole ``.nii`` file: ``values`` at the mask voxels, ``fill`` elsewhere."""
    values = np.asarray(values)
    if values.shape != (t.n_elements,):
        raise ValueError(
            f"{t.n_elements} mask voxels but the data has shape {values.shape}"
        )
    flat = np.full(int(np.prod(t.shape)), fill, dtype=np.float32)
    flat[t.flat_index] = values
    return t.header + flat.tobytes()


def write_volume(
    path: str | os.PathLike[str],
    t: VolumeTemplate,
    values: np.ndarray,
    *,
    overwrite: bool = False,
) -> Path:
    """Write one result volume (gzipped when the name ends ``.gz``), atomically."""
    target = Path(path)
    raw = volume_bytes(t, values)
    gz = target.name.endswith(".gz")
    if gz:
        raw = deflate(raw, GZIP_LEVEL, gzip=True)
    suffix = ".nii.gz" if gz else ".nii"
    with atomic_output(target, overwrite=overwrite, suffix=suffix) as tmp:
        tmp.write_bytes(raw)
    return target
