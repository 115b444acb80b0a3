"""CIFTI cohorts as lazy Datasets, ModelArray HDF5 out, results back to CIFTI.

``from_cohort`` reads a ModelArrayIO cohort CSV (long or wide) into a lazy
Dataset; ``to_modelarray`` writes a Dataset in ModelArray's layout exactly as
``modelarrayio to-modelarray`` does; ``to_cifti`` writes results as
``<analysis>_<stat>.dscalar.nii`` files exactly as ``modelarrayio
export-results`` does. The CLI uses the xarray-free equivalents
(``modelarray.convert.cohort_to_h5``, ``modelarray.export.export_results``), which
write the same files through the same loops.

The Dataset model (shared with the ModelArray reader in ``modelarray.store``):

* one data variable per scalar, dims ``(subject, element)``, float32, attribute
  ``modelarray_group="scalars"``; when scalars have different subject counts each
  gets its own dimension ``subject_<scalar>``;
* the stored source names (``column_names``) are the coordinate named by the
  variable's ``modelarray_sources`` attribute: ``source_file`` when there is one
  scalar, ``source_file_<scalar>`` otherwise, the strings exactly as in the CSV
  (only surrounding whitespace stripped, as ModelArrayIO does);
* the other cohort columns are coordinates along ``subject`` (``<col>_<scalar>``
  when scalars disagree);
* along ``element``: ``element`` (greyordinate index), ``structure``
  (``CIFTI_STRUCTURE_...``), ``vertex`` (surface vertex, -1 for voxels) and
  ``voxel_i``/``voxel_j``/``voxel_k`` (-1 for vertices);
* results (from a ModelArray file) are variables with
  ``modelarray_group="results"`` and dims ``(stat, element)`` (``stat_<analysis>``
  when analyses have different statistics), the stat dimension's coordinate
  holding the statistic names.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from xarray_clusterh5._hdf5.names import check_hdf5_name
from xarray_clusterh5.cifti import read as cifti
from xarray_clusterh5.modelarray import export, layout, voxels
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.sources import open_cohort
from xarray_clusterh5.modelarray.store import (
    ELEMENT_DIM,
    GROUP_ATTR,
    NAME_ATTR,
    SOURCES_ATTR,
    subject_dims,
)

DEFAULT_BATCH = 64

#: dask array name -> the CIFTI cohort array it reads, for arrays made here.
#: Any change to the data (a selection, arithmetic) gives a new name, so a
#: name found here means the values are the files' own: ``to_modelarray``
#: then streams from the files, held open, instead of through dask.
_FROM_FILES: weakref.WeakValueDictionary[str, modelarray_io.CohortArray] = (
    weakref.WeakValueDictionary()
)
#: dims of the voxel grid's 4x4 ``affine`` coordinate (NIfTI cohorts)
AFFINE_DIMS = ("affine_row", "affine_col")


def _subject_columns(long: pd.DataFrame) -> list[str]:
    return [
        c
        for c in long.columns
        if c not in ("scalar_name", "source_file", "_row", "_block")
    ]


def from_cohort(
    cohort_csv: str | os.PathLike[str],
    *,
    scalar_columns: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
    relative_to: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    map_index: int | None = None,
    mask: str | os.PathLike[str] | None = None,
    index_file: str | os.PathLike[str] | None = None,
    directions_file: str | os.PathLike[str] | None = None,
    allow_affine_mismatch: bool = False,
    progress: bool = False,
    threads: int | None = None,
) -> xr.Dataset:
    """Open a ModelArrayIO cohort (CIFTI, NIfTI or MIF) as a lazy Dataset.

    The modality comes from the file names, as in ModelArrayIO. CIFTI dscalar
    cohorts are the main CIFTI case; pscalar and pconn cohorts are read as
    ModelArrayIO reads them (pconn matrices flattened row-major) with parcel
    names along ``element`` instead of the brain model. NIfTI (voxel-wise)
    cohorts need ``mask`` (the group mask; elements are its voxels in C order,
    with ``i, j, k`` along ``element`` and the 4x4 ``affine`` coordinate;
    ``source_mask_file`` gives NaN outside each subject's mask). MIF
    (fixel-wise) cohorts need ``index_file`` and ``directions_file`` (elements
    are fixels, with ``voxel_id``, direction ``x, y, z`` and the voxel's
    ``voxel_i/j/k`` along ``element``).

    Parameters
    ----------
    cohort_csv : the cohort CSV. Long format has ``scalar_name`` and
        ``source_file`` columns; wide format names its path columns in
        ``scalar_columns``.
    scalar_columns : wide format: the columns holding file paths, one scalar each.
    batch_size : subjects per dask chunk.
    relative_to : base of relative paths; None = ModelArrayIO's rule (working
        directory) with a warned fallback to the CSV's folder; ``"cwd"``,
        ``"csv"`` or a folder to use only that (see :func:`resolve_sources`).
    storage_options : fsspec options (credentials, headers) for ``source_file``
        and ``source_mask_file`` values that are URLs (``https://``, ``s3://``,
        any fsspec protocol; the ``remote`` extra). Each URL is downloaded once,
        whole, into a temporary folder removed at exit.
    map_index : CIFTI: take this map of multi-map files (and allow
        dtseries/dlabel inputs); None requires single-map dscalar files.
    mask : NIfTI: the group mask (required).
    index_file, directions_file : MIF: the fixel index and directions (required).
    allow_affine_mismatch : NIfTI: accept images whose affine differs from the
        group mask's, with a warning (refused by default).
    progress : show a progress bar while checking headers.
    threads : threads reading headers (default up to 4).

    Returns
    -------
    xarray.Dataset
        One float32 variable per scalar, ``(subject, element)``, dask-chunked by
        ``batch_size`` subjects; cohort columns as ``subject`` coordinates;
        ``structure``, ``vertex``, ``voxel_i/j/k`` along ``element``. Attributes
        ``cohort_file``, ``cohort_format`` and ``cifti_template`` (the first
        file, used by :func:`to_cifti`).

    Raises
    ------
    ClusterH5Error
        Naming the CSV or the file: missing columns, non-CIFTI inputs, multi-map
        files without ``map_index``, files whose brain model differs from the
        first file's (also with the same greyordinate count).
    FileNotFoundError
        A source file is missing.

    Notes
    -----
    Every file's header is checked now (cheaply: the first file's XML is parsed
    once, the others' brain-model bytes compared); data is read when computed.
    As ModelArrayIO does, values are float32 whatever the files store.
    """
    csv = os.fspath(cohort_csv)
    table = modelarray_io.read_cohort_table(csv, scalar_columns)
    kind = modelarray_io.check_modality(csv, table.source_file)
    rows = modelarray_io.scalar_rows(table.scalar_name)
    src = open_cohort(
        table, rows, kind, relative_to=relative_to,
        storage_options=storage_options, map_index=map_index,
        mask=mask, index_file=index_file, directions_file=directions_file,
        allow_affine_mismatch=allow_affine_mismatch, progress=progress,
        threads=threads,
    )  # fmt: skip
    long = modelarray_io.cohort_frame(table)
    ds = cohort_dataset(csv, long, rows, src.arrays, batch_size)
    ds = ds.assign_coords(element_coords(src.coords, src.attrs.get("affine")))
    ds.attrs.update(
        cohort_file=str(Path(csv).resolve()),
        cohort_format="wide" if scalar_columns else "long",
        modelarray_modality=kind,
        **{k: v for k, v in src.attrs.items() if k != "affine"},
    )
    return ds


def element_coords(
    coords: dict[str, np.ndarray], affine: np.ndarray | None = None
) -> dict[str, Any]:
    """Element coordinates (and the voxel grid's affine, as a 4x4 coordinate)."""
    out: dict[str, Any] = {k: (ELEMENT_DIM, v) for k, v in coords.items()}
    if affine is not None:
        out["affine"] = (AFFINE_DIMS, np.asarray(affine, dtype=np.float64))
    return out


def _subject_coords(
    long: pd.DataFrame, rows: dict[str, np.ndarray]
) -> dict[str, tuple[str, np.ndarray]]:
    """Source names and the other cohort columns along each subject dimension.

    With a shared ``subject`` dimension a column is one coordinate when every
    scalar agrees on it, ``<col>_<scalar>`` for the scalars that differ.
    """
    names = subject_dims({s: len(r) for s, r in rows.items()})
    extra = _subject_columns(long)
    first = next(iter(rows))
    coords: dict[str, tuple[str, np.ndarray]] = {}
    for s, r in rows.items():
        g = long.iloc[r]
        dim, src = names[s]
        coords[src] = (dim, np.asarray(g["source_file"].tolist(), dtype=object))
        for c in extra:
            vals = g[c].to_numpy()
            if dim != "subject":
                coords[f"{c}_{s}"] = (dim, vals)
            elif s == first:
                coords[c] = (dim, vals)
            elif not pd.Series(vals).equals(
                pd.Series(long.iloc[rows[first]][c].to_numpy())
            ):
                coords[f"{c}_{s}"] = (dim, vals)
    return coords


def cohort_dataset(
    csv: str,
    long: pd.DataFrame,
    rows: dict[str, np.ndarray],
    arrays: dict[str, Any],
    batch_size: int,
) -> xr.Dataset:
    """One lazy ``(subject, element)`` variable per scalar with subject coordinates.

    ``arrays`` holds one array-like ``(n_subjects, n_elements)`` per scalar,
    indexed orthogonally and picklable (it becomes a dask array chunked by
    ``batch_size`` subjects); element coordinates are the caller's.
    """
    names = subject_dims({s: len(r) for s, r in rows.items()})
    data_vars = {}
    for s, arr in arrays.items():
        dim, src = names[s]
        token = tokenize(csv, s, arr)
        # (dask clips a batch larger than the cohort to the cohort)
        chunks = (max(1, int(batch_size)), arr.shape[1])
        darr = da.from_array(
            arr, chunks=chunks, asarray=False, lock=False,
            name=f"cohort-{s}-{token}", inline_array=True,
        )  # fmt: skip
        if isinstance(arr, modelarray_io.CohortArray):
            _FROM_FILES[darr.name] = arr
        data_vars[s] = xr.DataArray(
            darr,
            dims=(dim, ELEMENT_DIM),
            attrs={GROUP_ATTR: "scalars", SOURCES_ATTR: src},
        )
    coords: dict[str, Any] = dict(_subject_coords(long, rows))
    n_el = next(iter(arrays.values())).shape[1]
    coords[ELEMENT_DIM] = (ELEMENT_DIM, np.arange(n_el, dtype=np.int64))
    return xr.Dataset(data_vars, coords=coords)


# --------------------------------------------------------------------------
# writing ModelArray HDF5
# --------------------------------------------------------------------------


def scalar_variables(ds: xr.Dataset) -> list[str]:
    """Data variables that are ModelArray scalars (subject x element)."""
    tagged = [
        str(k) for k, v in ds.data_vars.items() if v.attrs.get(GROUP_ATTR) == "scalars"
    ]
    if tagged:
        return tagged
    return [
        str(k)
        for k, v in ds.data_vars.items()
        if v.ndim == 2
        and ELEMENT_DIM in v.dims
        and v.attrs.get(GROUP_ATTR) != "results"
    ]


def _sources_of(ds: xr.Dataset, name: str) -> list[str]:
    var = ds[name]
    subject_dim = next(d for d in var.dims if d != ELEMENT_DIM)
    candidates = [var.attrs.get(SOURCES_ATTR), f"source_file_{name}", "source_file"]
    for c in candidates:
        if c and c in ds.coords and ds[c].dims == (subject_dim,):
            return [str(v) for v in ds[c].values]
    raise ValueError(
        f"scalar {name!r}: no source-file coordinate along {subject_dim!r} "
        f"(looked for {[c for c in candidates if c]}); ModelArray needs one name "
        "per subject"
    )


def _values(ds: xr.Dataset, *names: str) -> list[np.ndarray]:
    return [np.asarray(ds[n].values) for n in names]


def _fixel_writer(ds: xr.Dataset) -> Any:
    """``/fixels`` from ``element``, ``voxel_id``, ``x, y, z``; ``/voxels`` from
    each voxel's ``voxel_i/j/k``."""
    fixel_id, voxel_id, x, y, z = _values(ds, ELEMENT_DIM, "voxel_id", "x", "y", "z")
    table = np.vstack([fixel_id, voxel_id, x, y, z]).astype(np.float64)
    vids, first = np.unique(voxel_id.astype(np.int64), return_index=True)
    ijk = np.column_stack(_values(ds, "voxel_i", "voxel_j", "voxel_k"))[first]
    if not np.array_equal(vids, np.arange(vids.size)):
        raise ValueError(
            "voxel_id must number the voxels 0..n-1 for ModelArray's /voxels table"
        )

    def write(f: Any) -> None:
        dset = f.create_dataset(layout.FIXELS.lstrip("/"), data=table)
        dset.attrs["column_names"] = list(layout.FIXEL_COLUMNS)
        voxels.write_voxels(f, ijk)

    return write


def _element_writer(ds: xr.Dataset) -> Any:
    """Writes ``/greyordinates`` (from ``structure``), ``/parcels`` (from
    ``parcel`` or ``parcel_from``/``parcel_to``), ``/voxels`` (from ``i, j,
    k``) or ``/fixels`` + ``/voxels`` (from ``voxel_id``, ``x, y, z``)."""
    coords = ds.coords
    if {"voxel_id", "x", "y", "z", "voxel_i"} <= set(coords):
        return _fixel_writer(ds)
    if {"i", "j", "k"} <= set(coords) and "structure" not in coords:
        ijk = np.column_stack(_values(ds, "i", "j", "k"))
        return lambda f: voxels.write_voxels(f, ijk)
    if "structure" in coords:
        codes, names = cifti.factorize_structures(
            np.asarray(ds["structure"].values, dtype=str)
        )
        return lambda f: modelarray_io.write_greyordinates(f, codes, names)
    if "parcel" in coords:
        arrays = {"parcel_id": [str(v) for v in ds["parcel"].values]}
        return lambda f: modelarray_io.write_parcels(f, arrays)
    if "parcel_from" in coords and "parcel_to" in coords:
        rows = list(dict.fromkeys(str(v) for v in ds["parcel_from"].values))
        n_cols = ds.sizes[ELEMENT_DIM] // max(1, len(rows))
        cols = [str(v) for v in ds["parcel_to"].values[:n_cols]]
        expected = modelarray_io.parcel_element_names(
            "Dataset",
            {"parcel_id_from": np.array(rows), "parcel_id_to": np.array(cols)},
            ds.sizes[ELEMENT_DIM],
        )
        if not (
            np.array_equal(
                expected["parcel_from"], ds["parcel_from"].values.astype(str)
            )
            and np.array_equal(
                expected["parcel_to"], ds["parcel_to"].values.astype(str)
            )
        ):
            raise ValueError(
                "parcel_from/parcel_to are not a full row-major pconn matrix; "
                "/parcels cannot be written"
            )
        arrays = {"parcel_id_from": rows, "parcel_id_to": cols}
        return lambda f: modelarray_io.write_parcels(f, arrays)
    raise ValueError(
        "the Dataset has no 'structure' (or 'parcel') coordinate along 'element'; "
        "ModelArray's element table cannot be written"
    )


def _stripe_reader(
    var: xr.DataArray, pool: ThreadPoolExecutor, threads: int, held: ExitStack
) -> Any:
    subject_dim = next(d for d in var.dims if d != ELEMENT_DIM)
    var = var.transpose(subject_dim, ELEMENT_DIM)
    files = _FROM_FILES.get(getattr(var.data, "name", ""))
    if files is not None:
        # one pread per file and stripe (the CLI's loop), not a dask graph each
        return modelarray_io.stripe_reader(files, pool, threads, held)

    def read(start: int, stop: int) -> np.ndarray:
        # dask fuses this slice into the CohortArray reads: only these bytes are read
        return np.asarray(var.isel({ELEMENT_DIM: slice(start, stop)}).values)

    return read


def to_modelarray(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    compression: str | None = "gzip",
    compression_level: int = 4,
    shuffle: bool = True,
    chunk_voxels: int = 0,
    target_chunk_mb: float = 2.0,
    dtype: Any = "float32",
    split_files: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scalars: Sequence[str] | None = None,
    threads: int | None = None,
    parents: bool = False,
) -> list[Path]:
    """Write scalars in ModelArray's HDF5 layout, as ``modelarrayio to-modelarray``.

    Parameters
    ----------
    ds : a Dataset from :func:`from_cohort` or from a ModelArray file.
    path : output ``.h5``; with split files, ``<scalar>_<name>`` in its folder.
    compression : ``"gzip"`` (default), ``"lzf"`` or ``"none"``.
    compression_level : gzip level, clamped to 0..9 (default 4).
    shuffle : byte shuffle before compressing (default True; only with a compressor).
    chunk_voxels : elements per chunk; 0 = from ``target_chunk_mb`` (ModelArrayIO's
        default). Chunks always span all subjects.
    target_chunk_mb : MiB per chunk when ``chunk_voxels`` is 0 (default 2.0).
        ``0.25`` or ``chunk_voxels=1024`` make ModelArray's element reads ~3x faster.
    dtype : ``"float32"`` (default) or ``"float64"``.
    split_files : one file per scalar; None = split for wide cohorts only.
    overwrite : replace existing outputs (refused otherwise).
    progress : progress bar on stderr.
    scalars : which scalar variables (default: all).
    threads : compression threads (default: available CPUs).
    parents : make the output's missing folders (else they are refused).

    Returns
    -------
    The files written. Each is written to a temporary file and renamed into
    place, so a failure never leaves a partial file.

    Raises
    ------
    ValueError
        ``ds`` holds model results (``results/<analysis>``) and ``scalars`` is
        not given: results are not written here, and are not dropped silently.
    ClusterH5Error
        The output's folder does not exist.
    """
    names = list(scalars) if scalars is not None else scalar_variables(ds)
    _refuse_unwritten_results(ds, names, scalars)
    if not names:
        raise ValueError(
            "the Dataset has no scalar variables (subject x element) to write"
        )
    for n in names:
        check_hdf5_name(n, "scalar name")
        if ELEMENT_DIM not in ds[n].dims or ds[n].ndim != 2:
            raise ValueError(
                f"{n!r} must have dims (subject, element), has {ds[n].dims}"
            )
    options = modelarray_io.StorageOptions(
        dtype, compression, compression_level, shuffle, chunk_voxels,
        target_chunk_mb, threads,
    )  # fmt: skip
    options.check()
    write_elements = _element_writer(ds)
    if split_files is None:
        split_files = ds.attrs.get("cohort_format") == "wide"
    plan = modelarray_io.output_plan(path, names, bool(split_files))
    n_threads = options.n_threads()
    with ThreadPoolExecutor(n_threads) as pool, ExitStack() as held:
        streams = {
            n: modelarray_io.ScalarStream(
                n, _sources_of(ds, n), _stripe_reader(ds[n], pool, n_threads, held)
            )
            for n in names
        }
        return modelarray_io.write_modelarray(
            plan, write_elements, streams, ds.sizes[ELEMENT_DIM], options,
            overwrite=overwrite, progress=progress, parents=parents,
        )  # fmt: skip


def _refuse_unwritten_results(
    ds: xr.Dataset, names: list[str], scalars: Sequence[str] | None
) -> None:
    """Results are not written by ``to_modelarray``: say so rather than drop them."""
    results = results_variables(ds)
    if results and scalars is None:
        raise ValueError(
            f"the Dataset holds model results {results}, which to_modelarray does "
            "not write (it writes scalars, as modelarrayio to-modelarray does); "
            f"pass scalars={names!r} to write only the scalars, or drop the "
            "results first (ds.drop_vars(...))"
        )


# --------------------------------------------------------------------------
# results to CIFTI
# --------------------------------------------------------------------------


def results_variables(ds: xr.Dataset) -> list[str]:
    """Data variables holding ModelArray results (stat x element)."""
    return [
        str(k) for k, v in ds.data_vars.items() if v.attrs.get(GROUP_ATTR) == "results"
    ]


def to_cifti(
    ds: xr.Dataset,
    output_dir: str | os.PathLike[str],
    *,
    analysis: str | None = None,
    example_file: str | os.PathLike[str] | None = None,
    cohort_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    parents: bool = False,
) -> list[Path]:
    """Write one analysis's results as ``<analysis>_<stat>.dscalar.nii`` files.

    Exactly ModelArrayIO's export: one file per statistic, plus
    ``<analysis>_<stat with p.value -> 1m.p.value>`` holding ``1 - value`` for
    each statistic whose name contains ``p.value``; the template's header, axes
    and on-disk dtype; NaN kept.

    Parameters
    ----------
    ds : Dataset with a results variable (``modelarray_group="results"``, dims
        ``(stat, element)``), e.g. opened from a ModelArray file, or any Dataset
        with a ``(stat, element)`` variable named by ``analysis``.
    output_dir : created if needed.
    analysis : the variable to export; default the only results variable.
    example_file, cohort_file : the template: a CIFTI file, or the first
        ``source_file`` of a cohort CSV; default ``ds.attrs["cifti_template"]``.
    overwrite : replace existing files (nothing is written when one exists).
    progress : progress bar on stderr.

    Returns
    -------
    The files written. Statistic and analysis names are sanitised (``/``, ``\\``,
    spaces and control characters to ``_``), so nothing is written outside
    ``output_dir``.
    """
    name, stats, matrix = results_matrix(ds, analysis)
    template = export.pick_template(ds.attrs, example_file, cohort_file)
    return export.write_cifti_results(
        output_dir,
        name,
        stats,
        matrix,
        template,
        overwrite=overwrite,
        progress=progress,
        parents=parents,
    )


def results_matrix(
    ds: xr.Dataset, analysis: str | None = None
) -> tuple[str, list[str], np.ndarray]:
    """``(analysis name, statistic names, (n_stats, n_elements) values)``.

    ``analysis`` names a results variable (or its ``modelarray_name``);
    default the only results variable of ``ds``.
    """
    candidates = results_variables(ds)
    if analysis is None:
        if len(candidates) != 1:
            raise ValueError(
                f"choose the analysis to export: results variables are {candidates}"
            )
        analysis = candidates[0]
    var_name = analysis
    if var_name not in ds.data_vars:
        matches = [k for k in candidates if ds[k].attrs.get(NAME_ATTR) == analysis]
        if not matches:
            raise KeyError(f"no results variable {analysis!r}; have {candidates}")
        var_name = matches[0]
    var = ds[var_name]
    if ELEMENT_DIM not in var.dims or var.ndim != 2:
        raise ValueError(f"{var_name!r} must have dims (stat, element), has {var.dims}")
    stat_dim = next(d for d in var.dims if d != ELEMENT_DIM)
    var = var.transpose(stat_dim, ELEMENT_DIM)
    stats = (
        [str(s) for s in ds[stat_dim].values]
        if stat_dim in ds.coords
        else [f"component{i + 1:03d}" for i in range(var.shape[0])]
    )
    name = str(var.attrs.get(NAME_ATTR, var_name))
    return name, stats, np.asarray(var.values)
