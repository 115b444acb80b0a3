"""Writing CIFTI-2 files: ModelArray export rows and clustered-experiment series.

Writing a dscalar export copies the template's header bytes and appends the
row (:func:`write_dscalar_row`), which is what nibabel writes for a
nibabel-written template and equal at the nibabel level (axes and data) for any
other; templates with scaling or integer types go through nibabel. The file
names and the export loop are ModelArrayIO's and live with the ModelArray code
(:mod:`xarray_clusterh5.modelarray.export`).

:func:`write_dtseries` and :func:`write_ptseries` are NumPy-level writers for the
clustered-experiment side. No xarray here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.cifti2 import cifti2_axes

from xarray_clusterh5._hdf5.files import atomic_output
from xarray_clusterh5.cifti.read import (
    _cifti_xml,
    _dims,
    _kind,
    _read_header,
    _storage,
)
from xarray_clusterh5.errors import ClusterH5Error


@dataclass(frozen=True)
class Template:
    """An export template: header bytes for the fast path, or a nibabel image."""

    path: str
    kind: str
    #: (rows, columns) of each written matrix: (1, n) except for pconn
    shape: tuple[int, int]
    header_bytes: bytes | None
    dtype: np.dtype | None
    image: Any = None

    @property
    def n_elements(self) -> int:
        """Values per written file (a pconn matrix flattened row-major)."""
        return self.shape[0] * self.shape[1]


def load_template(path: str | os.PathLike[str]) -> Template:
    """Prepare a CIFTI-2 file as the template of exports (as ModelArrayIO uses it).

    Single-map dscalar and pscalar files and pconn files are accepted, as in
    ModelArrayIO. The fast path (header bytes + data) is used for templates stored
    as unscaled float32/float64; anything else is written by nibabel.
    """
    path = os.fspath(path)
    h = _read_header(path)
    kind = _kind(h, _cifti_xml(h))
    n_maps, n_el = _dims(h)
    if kind not in ("dscalar", "pscalar", "pconn") or (kind != "pconn" and n_maps != 1):
        raise ClusterH5Error(
            path,
            "template must be a single-map dscalar or pscalar file or a pconn "
            f"file; this is a {kind} with {n_maps} maps",
        )
    shape = (n_maps, n_el)  # (1, n) but for pconn, as checked above
    dtype, use_nibabel = _storage(h)
    if not use_nibabel and dtype.kind == "f":  # header bytes + data
        return Template(path, kind, shape, h.raw, dtype)
    try:
        img = nib.load(path)
    except Exception as err:
        raise ClusterH5Error(path, f"nibabel cannot read it: {err}") from err
    return Template(path, kind, shape, None, None, img)


def write_dscalar_row(
    path: str | os.PathLike[str],
    row: np.ndarray,
    template: Template,
    *,
    overwrite: bool,
) -> Path:
    """Write one map with the template's header, atomically."""
    row = np.asarray(row)
    if row.ndim != 1 or row.shape[0] != template.n_elements:
        raise ClusterH5Error(
            template.path,
            f"template has {template.n_elements} greyordinates but the data has "
            f"shape {row.shape}",
        )
    matrix = row.reshape(template.shape)  # pconn rows were flattened row-major
    target = Path(path)
    with atomic_output(target, overwrite=overwrite, suffix=".nii") as tmp:
        if template.header_bytes is not None:
            assert template.dtype is not None
            with open(tmp, "wb") as fh:
                fh.write(template.header_bytes)
                # NIfTI stores the first CIFTI dimension fastest (column-major)
                fh.write(matrix.T.astype(template.dtype).tobytes())
        else:
            img = template.image
            out = nib.Cifti2Image(
                matrix, header=img.header, nifti_header=img.nifti_header
            )
            out.to_filename(tmp)
    return target


# --------------------------------------------------------------------------
# writing: clustered experiments as dtseries / ptseries
# --------------------------------------------------------------------------


def _check_ijk(ijk: Any, volume_shape: Sequence[int], what: str) -> np.ndarray:
    arr = np.asarray(ijk)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"{what}: voxel indices must have shape (n, 3), got {arr.shape}"
        )
    arr = arr.astype(np.int64)
    shape = np.asarray(volume_shape, dtype=np.int64)
    if arr.size and ((arr < 0).any() or (arr >= shape).any()):
        raise ValueError(
            f"{what}: voxel indices outside the volume {tuple(shape.tolist())}"
        )
    return arr


def _series(n_time: int, tr: float) -> cifti2_axes.SeriesAxis:
    if not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"TR must be a positive number of seconds, got {tr}")
    return cifti2_axes.SeriesAxis(
        start=0.0, step=float(tr), size=int(n_time), unit="SECOND"
    )


def _save_cifti(
    path: str | os.PathLike[str],
    data: np.ndarray,
    axes: tuple[Any, Any],
    overwrite: bool,
) -> Path:
    img = nib.Cifti2Image(np.ascontiguousarray(data, dtype=np.float32), header=axes)
    target = Path(path)
    with atomic_output(target, overwrite=overwrite, suffix=".nii") as tmp:
        img.to_filename(tmp)
    return target


def write_dtseries(
    path: str | os.PathLike[str],
    data: np.ndarray,
    ijk: np.ndarray,
    affine: np.ndarray,
    volume_shape: Sequence[int],
    tr: float,
    *,
    structure: str = "CIFTI_STRUCTURE_OTHER",
    overwrite: bool = False,
) -> Path:
    """Write voxel time series as a CIFTI-2 dense time series (``.dtseries.nii``).

    Parameters
    ----------
    data : (n_voxels, n_time) values; stored as float32.
    ijk : (n_voxels, 3) 0-based voxel indices (i, j, k), in the order of ``data``'s
        rows. The brain-model axis keeps this order (it is built from explicit
        voxels, not from a mask, whose C order would reorder them), so element
        ``n`` of the file is row ``n`` of ``data``.
    affine : (4, 4) voxel-to-world matrix of the volume.
    volume_shape : (i, j, k) shape of the volume.
    tr : repetition time in seconds (the series axis step; start 0).
    structure : CIFTI brain structure of the single volume model.
    overwrite : replace an existing file.
    """
    data = np.asarray(data)
    ijk = _check_ijk(ijk, volume_shape, os.fspath(path))
    if data.ndim != 2 or data.shape[0] != ijk.shape[0]:
        raise ValueError(
            f"{os.fspath(path)}: data shape {data.shape} does not match "
            f"{ijk.shape[0]} voxels (expected (n_voxels, n_time))"
        )
    if ijk.shape[0] == 0:
        raise ValueError(f"{os.fspath(path)}: no voxels to write")
    if len({tuple(v) for v in ijk.tolist()}) != ijk.shape[0]:
        raise ValueError(f"{os.fspath(path)}: repeated voxel indices")
    bm = cifti2_axes.BrainModelAxis(
        structure,
        voxel=ijk,
        affine=np.asarray(affine, dtype=float),
        volume_shape=tuple(int(s) for s in volume_shape),
    )
    return _save_cifti(path, data.T, (_series(data.shape[1], tr), bm), overwrite)


def write_ptseries(
    path: str | os.PathLike[str],
    summary: np.ndarray,
    parcel_names: Sequence[str],
    parcel_ijk: Sequence[np.ndarray],
    affine: np.ndarray,
    volume_shape: Sequence[int],
    tr: float,
    *,
    overwrite: bool = False,
) -> Path:
    """Write cluster summaries as a CIFTI-2 parcellated time series (``.ptseries.nii``).

    Parameters
    ----------
    summary : (n_clusters, n_time) values; stored as float32.
    parcel_names : one unique name per cluster (row of ``summary``).
    parcel_ijk : per cluster, an (n_c, 3) array of 0-based voxel indices.
    affine, volume_shape : the volume of the voxels.
    tr : repetition time in seconds.
    overwrite : replace an existing file.
    """
    summary = np.asarray(summary)
    names = [str(n) for n in parcel_names]
    if (
        summary.ndim != 2
        or summary.shape[0] != len(names)
        or len(names) != len(parcel_ijk)
    ):
        raise ValueError(
            f"{os.fspath(path)}: summary shape {summary.shape}, {len(names)} names and "
            f"{len(parcel_ijk)} voxel lists must agree (expected (n_clusters, n_time))"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{os.fspath(path)}: parcel names must be unique")
    voxels = [_check_ijk(v, volume_shape, os.fspath(path)) for v in parcel_ijk]
    parcels = cifti2_axes.ParcelsAxis(
        names,
        voxels,
        [{} for _ in names],
        affine=np.asarray(affine, dtype=float),
        volume_shape=tuple(int(s) for s in volume_shape),
    )
    return _save_cifti(
        path, summary.T, (_series(summary.shape[1], tr), parcels), overwrite
    )
