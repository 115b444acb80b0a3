"""Results to image files, as ``modelarrayio export-results`` writes them.

One loop (:func:`write_result_files`) turns a ``(n_stats, n_elements)`` results
matrix into ModelArrayIO's files (``<analysis>_<stat><suffix>``, plus
``1m.p.value`` files holding ``1 - p``); each image format supplies only the
function writing one row. No xarray here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xarray_clusterh5._hdf5.files import output_folder
from xarray_clusterh5.cifti import read as cifti_read
from xarray_clusterh5.cifti import write as cifti_write
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.layout import export_file_names

#: ``write_row(path, values, overwrite=...)`` writes one statistic's file
RowWriter = Callable[..., Path]


def _inside(folder: Path, file: Path) -> Path:
    # belt and braces after sanitising: the file must sit directly in the folder
    if file.parent.resolve() != folder.resolve() or file.name in ("", ".", ".."):
        raise ValueError(f"{file}: refusing to write outside {folder}")
    return file


def export_plan(
    output_dir: str | os.PathLike[str],
    analysis: str,
    stats: Sequence[str],
    suffix: str,
    *,
    overwrite: bool,
) -> list[tuple[int, Path, bool]]:
    """``(row, path, is_1m)`` of every file, checked before anything is written.

    Raises ValueError when two statistics give one file name and
    FileExistsError when a file exists and ``overwrite`` is False.
    """
    folder = Path(output_dir)
    plan = [
        (row, _inside(folder, folder / f"{stem}{suffix}"), one_minus)
        for row, stem, one_minus in export_file_names(analysis, list(stats))
    ]
    seen: set[Path] = set()
    for _, target, _ in plan:
        if target in seen:
            raise ValueError(f"{target}: two statistics map to the same file name")
        seen.add(target)
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"{target}: exists; pass overwrite=True to replace it"
            )
    return plan


def write_result_files(
    output_dir: str | os.PathLike[str],
    analysis: str,
    stats: Sequence[str],
    matrix: np.ndarray,
    suffix: str,
    write_row: RowWriter,
    *,
    overwrite: bool = False,
    progress: bool = False,
    parents: bool = False,
) -> list[Path]:
    """Write ModelArrayIO's export files for one analysis.

    Parameters
    ----------
    output_dir : folder, made if its parent exists (or with ``parents``).
    analysis : analysis name; files are ``<analysis>_<stat><suffix>``.
    stats : statistic names, one per row of ``matrix``.
    matrix : (n_stats, n_elements) results.
    suffix : file suffix, e.g. ``.dscalar.nii``, ``.nii.gz``, ``.mif.gz``.
    write_row : ``write_row(path, row, overwrite=...)`` writes one file atomically.
    overwrite : replace existing files; otherwise refuse before writing anything.
    progress : progress bar on stderr.
    parents : make missing parent folders too (``mkdir -p``).

    Returns
    -------
    The paths written, in ModelArrayIO's order.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != len(stats):
        raise ValueError(
            f"{len(stats)} statistic names for a results matrix of shape {matrix.shape}"
        )
    plan = export_plan(output_dir, analysis, stats, suffix, overwrite=overwrite)
    output_folder(output_dir, create=True, parents=parents)
    items: Iterable[tuple[int, Path, bool]] = plan
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(plan, desc=f"export {analysis}", unit="file", file=sys.stderr)
    written = []
    for row, target, one_minus in items:
        data = matrix[row]
        if one_minus:
            data = 1 - data
        written.append(write_row(target, data, overwrite=overwrite))
    return written


def write_cifti_results(
    output_dir: str | os.PathLike[str],
    analysis: str,
    stats: Sequence[str],
    matrix: np.ndarray,
    template: cifti_write.Template,
    *,
    overwrite: bool = False,
    progress: bool = False,
    parents: bool = False,
) -> list[Path]:
    """:func:`write_result_files` as ``<analysis>_<stat>.<kind>.nii`` CIFTI files."""

    def write_row(path: Path, row: np.ndarray, *, overwrite: bool) -> Path:
        return cifti_write.write_dscalar_row(path, row, template, overwrite=overwrite)

    return write_result_files(
        output_dir,
        analysis,
        stats,
        matrix,
        f".{template.kind}.nii",
        write_row,
        overwrite=overwrite,
        progress=progress,
        parents=parents,
    )


def template_from_cohort(
    cohort_file: str | os.PathLike[str],
    relative_to: str | os.PathLike[str] | None = None,
) -> str:
    """The first row's ``source_file`` of a long cohort (ModelArrayIO's template)."""
    long = modelarray_io.read_cohort(cohort_file)
    first = long["source_file"].iloc[0]
    return modelarray_io.resolve_sources(cohort_file, [first], relative_to)[0]


def pick_template(
    ds_attrs: dict[str, Any] | None,
    example_file: str | os.PathLike[str] | None,
    cohort_file: str | os.PathLike[str] | None,
) -> cifti_write.Template:
    """The CIFTI export template: ``example_file``, the cohort's first file, or
    the Dataset's ``cifti_template`` attribute."""
    if example_file is not None and cohort_file is not None:
        raise ValueError("give example_file or cohort_file, not both")
    if example_file is not None:
        tpath = os.fspath(example_file)
        if not os.path.exists(tpath):
            raise FileNotFoundError(f"{tpath}: template file does not exist")
    elif cohort_file is not None:
        tpath = template_from_cohort(cohort_file)
    elif ds_attrs and ds_attrs.get("cifti_template"):
        tpath = str(ds_attrs["cifti_template"])
    else:
        raise ValueError(
            "no CIFTI template: give example_file= or cohort_file= (ModelArray files "
            "store no brain-model geometry)"
        )
    kind = cifti_read.cifti_kind_from_name(tpath)
    if kind is None and tpath.endswith(modelarray_io.NIFTI_SUFFIXES):
        raise ClusterH5Error(
            tpath, "template is NIfTI, not CIFTI; NIfTI export is not supported"
        )
    return cifti_write.load_template(tpath)


def export_results(
    in_file: str | os.PathLike[str],
    analysis: str,
    output_dir: str | os.PathLike[str],
    *,
    example_file: str | os.PathLike[str] | None = None,
    cohort_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    parents: bool = False,
) -> list[Path]:
    """``modelarrayio export-results`` for CIFTI, straight from the HDF5 file.

    Reads ``results/<analysis>/results_matrix`` once (not row by row) with its
    statistic names (:func:`~xarray_clusterh5.modelarray.h5.read_results`) and
    writes the files as :func:`~xarray_clusterh5.modelarray.cohort.to_cifti` does.
    """
    template = pick_template(None, example_file, cohort_file)
    names, matrix = modelarray_io.read_results(in_file, analysis)
    return write_cifti_results(
        output_dir,
        analysis,
        names,
        matrix,
        template,
        overwrite=overwrite,
        progress=progress,
        parents=parents,
    )
