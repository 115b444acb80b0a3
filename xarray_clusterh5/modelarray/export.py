"""Results to image files, as ``modelarrayio export-results`` writes them.

One loop (:func:`write_result_files`) turns a ``(n_stats, n_elements)`` results
matrix into ModelArrayIO's files (``<analysis>_<stat><suffix>``, plus
``1m.p.value`` files holding ``1 - p``); each image format supplies only the
function writing one row. No xarray here.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xarray_clusterh5._hdf5.chunk_write import default_threads
from xarray_clusterh5._hdf5.files import atomic_output, output_folder
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.layout import export_file_names

if TYPE_CHECKING:
    from xarray_clusterh5.cifti import write as cifti_write

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
    threads: int = 1,
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
    threads : files written at once (compression releases the GIL).
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

    def one(item: tuple[int, Path, bool]) -> Path:
        row, target, one_minus = item
        data = matrix[row]
        if one_minus:
            data = 1 - data
        return write_row(target, data, overwrite=overwrite)

    existed = {target for _, target, _ in plan if target.exists()}
    try:
        if threads <= 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, items))
    except BaseException:
        # a failed export leaves no new files behind (each file is atomic)
        for _, target, _ in plan:
            if target not in existed:
                target.unlink(missing_ok=True)
        raise


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
    from xarray_clusterh5.cifti import write as cifti_write

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
    path = os.fspath(cohort_file)
    first = modelarray_io.read_cohort_table(path).source_file[0]
    return modelarray_io.resolve_sources(path, [first], relative_to)[0]


def pick_template(
    ds_attrs: dict[str, Any] | None,
    example_file: str | os.PathLike[str] | None,
    cohort_file: str | os.PathLike[str] | None,
) -> cifti_write.Template:
    """The CIFTI export template: ``example_file``, the cohort's first file, or
    the Dataset's ``cifti_template`` attribute."""
    from xarray_clusterh5.cifti import read as cifti_read
    from xarray_clusterh5.cifti import write as cifti_write

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
            tpath,
            "the template appears to be NIfTI; for NIfTI results give the group "
            "mask (--mask / mask=) instead",
        )
    if kind is None and tpath.endswith(modelarray_io.MIF_SUFFIXES):
        raise ClusterH5Error(
            tpath,
            "the template appears to be MIF; for fixel results give the index and "
            "directions files (--index-file / --directions-file) too",
        )
    return cifti_write.load_template(tpath)


def write_nifti_results(
    output_dir: str | os.PathLike[str],
    analysis: str,
    stats: Sequence[str],
    matrix: np.ndarray,
    mask: str | os.PathLike[str],
    *,
    compress: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    parents: bool = False,
) -> list[Path]:
    """:func:`write_result_files` as ``<analysis>_<stat>.nii[.gz]`` volumes.

    ModelArrayIO's NIfTI export: the group mask's header with float32 data,
    values at the mask's voxels (C order), 0 outside, NaN kept.
    """
    from xarray_clusterh5.modelarray.voxels import load_group_mask
    from xarray_clusterh5.nifti.write import volume_template, write_volume

    grid = load_group_mask(os.fspath(mask))
    template = volume_template(grid.path, grid.flat_index)
    _check_width(grid.path, template.n_elements, matrix)
    return write_result_files(
        output_dir, analysis, stats, matrix, ".nii.gz" if compress else ".nii",
        lambda path, row, *, overwrite: write_volume(
            path, template, row, overwrite=overwrite
        ),
        overwrite=overwrite, progress=progress,
        threads=threads or default_threads(), parents=parents,
    )  # fmt: skip


def write_mif_results(
    output_dir: str | os.PathLike[str],
    analysis: str,
    stats: Sequence[str],
    matrix: np.ndarray,
    template_file: str | os.PathLike[str],
    *,
    compress: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    parents: bool = False,
) -> list[Path]:
    """:func:`write_result_files` as ``<analysis>_<stat>.mif[.gz]`` fixel files.

    The template's geometry, layout and other header lines, float32 data.
    Unlike ModelArrayIO, a template's ``scaling:`` line is not copied (the
    values are stored unscaled) and existing files are not silently kept.
    """
    from xarray_clusterh5.mif.header import read_header
    from xarray_clusterh5.mif.write import write_mif

    header = read_header(template_file)
    _check_width(header.path, header.n_values, matrix)
    return write_result_files(
        output_dir, analysis, stats, matrix, ".mif.gz" if compress else ".mif",
        lambda path, row, *, overwrite: write_mif(
            path, header, row, overwrite=overwrite
        ),
        overwrite=overwrite, progress=progress,
        threads=threads or default_threads(), parents=parents,
    )  # fmt: skip


def _check_width(template: str, n_elements: int, matrix: np.ndarray) -> None:
    width = np.shape(matrix)[-1]
    if width != n_elements:
        raise ClusterH5Error(
            template, f"the template has {n_elements} elements, the results {width}"
        )


def copy_fixel_files(
    output_dir: str | os.PathLike[str],
    index_file: str | os.PathLike[str],
    directions_file: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Copy ``index.mif`` and ``directions.mif`` next to fixel results
    (ModelArrayIO's export does; MRtrix needs them to read the results)."""
    out = []
    for src in (index_file, directions_file):
        target = Path(output_dir) / Path(src).name
        with atomic_output(target, overwrite=overwrite, suffix=".mif") as tmp:
            shutil.copyfile(src, tmp)
        out.append(target)
    return out


def template_source(
    example_file: str | os.PathLike[str] | None,
    cohort_file: str | os.PathLike[str] | None,
) -> str:
    """The template file: ``example_file`` or the cohort's first ``source_file``."""
    if example_file is not None and cohort_file is not None:
        raise ValueError("give example_file or cohort_file, not both")
    if example_file is not None:
        tpath = os.fspath(example_file)
        if not os.path.exists(tpath):
            raise FileNotFoundError(f"{tpath}: template file does not exist")
        return tpath
    if cohort_file is None:
        raise ValueError("a template is needed: give example_file or cohort_file")
    return template_from_cohort(cohort_file)


def export_results(
    in_file: str | os.PathLike[str],
    analysis: str,
    output_dir: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    index_file: str | os.PathLike[str] | None = None,
    directions_file: str | os.PathLike[str] | None = None,
    example_file: str | os.PathLike[str] | None = None,
    cohort_file: str | os.PathLike[str] | None = None,
    compress: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    parents: bool = False,
) -> list[Path]:
    """``modelarrayio export-results``, straight from the HDF5 file.

    The modality comes from the arguments, as in ModelArrayIO: ``mask`` =
    NIfTI volumes; ``index_file`` and ``directions_file`` = MIF fixel files
    (template: ``example_file`` or the cohort's first file; the index and
    directions files are copied to ``output_dir``); else CIFTI (template as
    for MIF). Reads ``results/<analysis>/results_matrix`` once with its
    statistic names (:func:`~xarray_clusterh5.modelarray.h5.read_results`).

    Returns
    -------
    The files written (for MIF, the copied index and directions files last).
    """
    kw: dict[str, Any] = {
        "overwrite": overwrite, "progress": progress, "parents": parents,
    }  # fmt: skip
    if mask is not None:
        names, matrix = modelarray_io.read_results(in_file, analysis)
        return write_nifti_results(
            output_dir, analysis, names, matrix, mask, compress=compress,
            threads=threads, **kw,
        )  # fmt: skip
    if index_file is not None or directions_file is not None:
        if index_file is None or directions_file is None:
            raise ValueError(
                "both index_file and directions_file are needed for MIF results"
            )
        tpath = template_source(example_file, cohort_file)
        names, matrix = modelarray_io.read_results(in_file, analysis)
        written = write_mif_results(
            output_dir, analysis, names, matrix, tpath, compress=compress,
            threads=threads, **kw,
        )  # fmt: skip
        copies = copy_fixel_files(
            output_dir, index_file, directions_file, overwrite=overwrite
        )
        return written + copies
    template = pick_template(None, example_file, cohort_file)
    names, matrix = modelarray_io.read_results(in_file, analysis)
    return write_cifti_results(output_dir, analysis, names, matrix, template, **kw)
