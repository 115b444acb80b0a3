"""ModelArray Datasets back to images: results as ``export-results`` writes
them (CIFTI, NIfTI volumes, MIF fixel files) and voxel scalars as 4-D NIfTI.

The modality follows the arguments as in ModelArrayIO (``mask`` = NIfTI,
``index_file``/``directions_file`` = MIF, else CIFTI), and falls back on what
``from_cohort`` recorded in the Dataset's attributes (``mask_file``,
``index_file``, ``directions_file``, ``mif_template``, ``cifti_template``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xarray_clusterh5.modelarray import export
from xarray_clusterh5.modelarray.cohort import results_matrix, scalar_variables
from xarray_clusterh5.modelarray.store import ELEMENT_DIM

PathLike = str | os.PathLike[str]


def _modality(ds: xr.Dataset, mask: Any, index_file: Any, directions_file: Any) -> str:
    if mask is not None:
        return "nifti"
    if index_file is not None or directions_file is not None:
        return "mif"
    return str(ds.attrs.get("modelarray_modality", "cifti"))


def export_results(
    ds: xr.Dataset,
    output_dir: PathLike,
    *,
    analysis: str | None = None,
    mask: PathLike | None = None,
    index_file: PathLike | None = None,
    directions_file: PathLike | None = None,
    example_file: PathLike | None = None,
    cohort_file: PathLike | None = None,
    compress: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write one analysis's results as ``modelarrayio export-results`` does.

    Parameters
    ----------
    ds : a Dataset with a results variable (``(stat, element)``).
    output_dir : folder, created if needed.
    analysis : the results variable; default the only one.
    mask : NIfTI: the group mask (default ``ds.attrs["mask_file"]``).
    index_file, directions_file : MIF: copied next to the results (default
        from ``ds.attrs``).
    example_file, cohort_file : CIFTI and MIF template (default the cohort's
        first file, recorded by ``from_cohort``).
    compress : ``.nii.gz`` / ``.mif.gz`` (else ``.nii`` / ``.mif``).
    overwrite : replace existing files (nothing is written when one exists).
    progress : progress bar on stderr.

    Returns
    -------
    The files written.
    """
    kind = _modality(ds, mask, index_file, directions_file)
    name, stats, matrix = results_matrix(ds, analysis)
    kw: dict[str, Any] = {"overwrite": overwrite, "progress": progress}
    attrs = ds.attrs
    if kind == "nifti":
        m = mask if mask is not None else attrs.get("mask_file")
        if m is None:
            raise ValueError("NIfTI results need the group mask: give mask=")
        return export.write_nifti_results(
            output_dir, name, stats, matrix, m, compress=compress, **kw
        )
    if kind == "mif":
        ifile = index_file if index_file is not None else attrs.get("index_file")
        dfile = (
            directions_file
            if directions_file is not None
            else attrs.get("directions_file")
        )
        if ifile is None or dfile is None:
            raise ValueError("MIF results need index_file= and directions_file=")
        if example_file is None and cohort_file is None:
            example_file = attrs.get("mif_template")
        template = export.template_source(example_file, cohort_file)
        out = export.write_mif_results(
            output_dir, name, stats, matrix, template, compress=compress, **kw
        )
        return out + export.copy_fixel_files(
            output_dir, ifile, dfile, overwrite=overwrite
        )
    cifti = export.pick_template(attrs, example_file, cohort_file)
    return export.write_cifti_results(output_dir, name, stats, matrix, cifti, **kw)


def to_nifti_4d(
    ds: xr.Dataset,
    path: PathLike,
    *,
    scalar: str | None = None,
    mask: PathLike | None = None,
    fill_value: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Write one voxel-wise scalar as a 4-D NIfTI, one volume per subject.

    The group mask's header and affine with float32 data (as the exports),
    ``fill_value`` outside the mask; elements are placed by the ``i, j, k``
    coordinates, so subsets of voxels are written where they belong.
    Gzipped when ``path`` ends with ``.gz``; written atomically.
    """
    import nibabel as nib

    from xarray_clusterh5._hdf5.files import atomic_output

    names = [scalar] if scalar is not None else scalar_variables(ds)
    if len(names) != 1:
        raise ValueError(f"choose the scalar to write: scalars are {names}")
    var = ds[names[0]]
    subject_dim = next(d for d in var.dims if d != ELEMENT_DIM)
    m = mask if mask is not None else ds.attrs.get("mask_file")
    if m is None or not {"i", "j", "k"} <= set(ds.coords):
        raise ValueError("a voxel-wise Dataset (i, j, k coordinates) and its mask")
    ref: Any = nib.load(os.fspath(m))
    shape = tuple(int(s) for s in ref.shape[:3])
    ijk = tuple(np.asarray(ds[c].values, dtype=np.int64) for c in "ijk")
    values = np.asarray(var.transpose(subject_dim, ELEMENT_DIM).values, np.float32)
    data = np.full((*shape, values.shape[0]), fill_value, dtype=np.float32)
    data[ijk] = values.T
    header = ref.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(data, ref.affine, header)
    target = Path(path)
    suffix = ".nii.gz" if target.name.endswith(".gz") else ".nii"
    with atomic_output(target, overwrite=overwrite, suffix=suffix) as tmp:
        img.to_filename(tmp)
    return target
