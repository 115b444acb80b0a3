"""CIFTI cohorts as lazy Datasets, ModelArray HDF5 out, results back to CIFTI.

``from_cohort`` reads a ModelArrayIO cohort CSV (long or wide) into a lazy
Dataset; ``to_modelarray`` writes a Dataset in ModelArray's layout exactly as
``modelarrayio to-modelarray`` does; ``to_cifti`` and ``export_results`` write
results as ``<analysis>_<stat>.dscalar.nii`` files exactly as ``modelarrayio
export-results`` does.

The Dataset model (shared with the ModelArray reader in
``_modelarray_backend``):

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
  ``modelarray_group="results"`` and dims ``(stat, element)``, ``stat`` holding
  the statistic names.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from xarray_clusterh5 import _layout, cifti, modelarray_io
from xarray_clusterh5._h5 import ClusterH5Error, atomic_output
from xarray_clusterh5._modelarray_backend import (
    ELEMENT_DIM,
    GROUP_ATTR,
    NAME_ATTR,
    SOURCES_ATTR,
)

DEFAULT_BATCH = 64

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MIF_SUFFIXES = (".mif", ".mif.gz")


# --------------------------------------------------------------------------
# cohort CSV
# --------------------------------------------------------------------------


def read_cohort(
    cohort_csv: str | os.PathLike[str], scalar_columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """A cohort CSV normalised as ModelArrayIO does: long ``scalar_name, source_file``.

    Long format needs columns ``scalar_name`` and ``source_file``; rows where
    either is empty are dropped. Wide format (``scalar_columns``) melts each row
    into one row per scalar column, skipping empty cells. Values are stripped of
    surrounding whitespace and otherwise kept verbatim (path columns are read as
    text, so ``001.nii`` stays ``001.nii``). Other columns are kept.
    """
    path = os.fspath(cohort_csv)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: cohort file does not exist")
    header = pd.read_csv(path, nrows=0)
    cols = list(header.columns)
    scalar_columns = [c for c in (scalar_columns or []) if c]
    text_cols = scalar_columns or [
        c for c in ("scalar_name", "source_file") if c in cols
    ]
    df = pd.read_csv(path, dtype={c: str for c in text_cols if c in cols})
    if scalar_columns:
        missing = [c for c in scalar_columns if c not in cols]
        if missing:
            raise ClusterH5Error(
                path, f"wide-format cohort is missing scalar columns {missing}"
            )
        extra = [c for c in cols if c not in scalar_columns]
        records = []
        for i, row in enumerate(df.itertuples(index=False)):
            rec = dict(zip(cols, row, strict=True))
            for sc in scalar_columns:
                val = rec[sc]
                if val is None or pd.isna(val) or not str(val).strip():
                    continue
                records.append(
                    {
                        "scalar_name": sc,
                        "source_file": str(val).strip(),
                        "_row": i,
                        **{c: rec[c] for c in extra},
                    }
                )
        long = pd.DataFrame.from_records(
            records, columns=["scalar_name", "source_file", "_row", *extra]
        )
    else:
        missing = [c for c in ("scalar_name", "source_file") if c not in cols]
        if missing:
            raise ClusterH5Error(
                path,
                "cohort file must contain columns ['scalar_name', 'source_file'] "
                f"(missing {missing}); for a wide cohort give scalar_columns",
            )
        long = df.copy()
        long["_row"] = np.arange(len(long))
        long = long.dropna(subset=["scalar_name", "source_file"])
        long["scalar_name"] = long["scalar_name"].astype(str).str.strip()
        long["source_file"] = long["source_file"].astype(str).str.strip()
        long = long[(long["scalar_name"] != "") & (long["source_file"] != "")]
    if long.empty:
        raise ClusterH5Error(
            path, "cohort file has no scalar entries after normalisation"
        )
    return long.reset_index(drop=True)


def _check_modality(csv: str, sources: Sequence[str]) -> None:
    kinds: dict[str, str] = {}
    for s in sources:
        if cifti.cifti_kind_from_name(s):
            kinds.setdefault("cifti", s)
        elif s.endswith(_MIF_SUFFIXES):
            kinds.setdefault("mif", s)
        elif s.endswith(_NIFTI_SUFFIXES):
            kinds.setdefault("nifti", s)
        else:
            raise ClusterH5Error(
                csv,
                f"cannot tell the type of {s!r}: expected a CIFTI file such as "
                ".dscalar.nii",
            )
    if len(kinds) > 1:
        raise ClusterH5Error(
            csv, f"cohort mixes modalities ({', '.join(sorted(kinds))}); e.g. {kinds}"
        )
    if "cifti" not in kinds:
        kind = next(iter(kinds))
        raise ClusterH5Error(
            csv,
            f"{kinds[kind]!r} is {kind.upper()}; clusterh5 converts CIFTI cohorts only "
            "(use ModelArrayIO for NIfTI and MIF data)",
        )


def resolve_sources(
    cohort_csv: str | os.PathLike[str],
    sources: Sequence[str],
    relative_to: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Absolute paths of ``source_file`` values.

    Rule: with ``relative_to=None`` a relative path is looked up as ModelArrayIO
    does, against the current working directory; if it is not there, the cohort
    CSV's folder is tried and a warning says so. ``relative_to="cwd"``,
    ``"csv"`` or a folder uses that base only. The strings stored in the output
    are never changed, only the paths opened.
    """
    csv_dir = Path(os.fspath(cohort_csv)).resolve().parent
    cwd = Path.cwd()
    fixed: Path | None = None
    if relative_to is not None:
        fixed = {"cwd": cwd, "csv": csv_dir}.get(str(relative_to), Path(relative_to))
    out: list[str] = []
    fell_back = 0
    for s in sources:
        p = Path(s).expanduser()
        if p.is_absolute():
            out.append(str(p))
            continue
        if fixed is not None:
            cand = fixed / p
            if not cand.exists():
                raise FileNotFoundError(f"{s}: no such file (looked in {fixed})")
            out.append(str(cand))
            continue
        if (cwd / p).exists():
            out.append(str(cwd / p))
        elif (csv_dir / p).exists():
            out.append(str(csv_dir / p))
            fell_back += 1
        else:
            raise FileNotFoundError(
                f"{s}: no such file, neither relative to the working directory "
                f"{cwd} (ModelArrayIO's rule) nor to the cohort file's folder {csv_dir}"
            )
    if fell_back:
        warnings.warn(
            f"{fell_back} source file(s) of {os.fspath(cohort_csv)} were not found "
            f"relative to the working directory {cwd} (where ModelArrayIO looks); "
            f"read them relative to the cohort file's folder {csv_dir}",
            UserWarning,
            stacklevel=3,
        )
    return out


# --------------------------------------------------------------------------
# lazy reads
# --------------------------------------------------------------------------


class CohortArray:
    """Array-like (n_files, n_elements) over a cohort's data blocks.

    Indexing reads only the requested greyordinates of the requested files
    (``os.pread`` at ``vox_offset``), so column stripes are cheap. Holds no open
    files: it pickles to dask workers.
    """

    def __init__(self, blocks: Sequence[cifti.DataBlock], n_elements: int) -> None:
        self.blocks = list(blocks)
        self.shape = (len(self.blocks), int(n_elements))
        self.dtype = np.dtype("float32")
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2 or any(k is Ellipsis for k in key):
            key = np.index_exp[key][:2]
        rows_key, cols_key = key
        rows = np.arange(self.shape[0])[rows_key]
        cols = np.arange(self.shape[1])[cols_key]
        rows_1d = np.atleast_1d(rows)
        cols_1d = np.atleast_1d(cols)
        if cols_1d.size == 0 or rows_1d.size == 0:
            out = np.empty((rows_1d.size, cols_1d.size), dtype=self.dtype)
        else:
            lo, hi = int(cols_1d.min()), int(cols_1d.max()) + 1
            out = np.empty((rows_1d.size, cols_1d.size), dtype=self.dtype)
            contiguous = cols_1d.size == hi - lo and np.all(np.diff(cols_1d) == 1)
            buf = np.empty(hi - lo, dtype=self.dtype)
            for i, r in enumerate(rows_1d):
                if contiguous:
                    cifti.read_columns(self.blocks[int(r)], lo, hi, out[i])
                else:
                    cifti.read_columns(self.blocks[int(r)], lo, hi, buf)
                    out[i] = buf[cols_1d - lo]
        if np.ndim(rows) == 0:
            out = out[0]
            return out[0] if np.ndim(cols) == 0 else out
        return out[:, 0] if np.ndim(cols) == 0 else out


def _check_all(
    paths: Sequence[str],
    map_index: int | None,
    progress: bool,
    threads: int | None,
) -> tuple[cifti.BrainModel, list[cifti.DataBlock]]:
    ref, first = cifti.read_reference(paths[0], map_index=map_index)
    rest = paths[1:]
    n_threads = threads or min(4, os.cpu_count() or 1)
    blocks = [first]
    with ThreadPoolExecutor(max(1, n_threads)) as pool:
        results = pool.map(
            lambda p: cifti.check_file(p, ref, map_index=map_index), rest
        )
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(
                results,
                total=len(rest),
                desc="checking CIFTI headers",
                unit="file",
                file=sys.stderr,
            )
        blocks.extend(results)
    return ref, blocks


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
    map_index: int | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> xr.Dataset:
    """Open a ModelArrayIO cohort of CIFTI dscalar files as a lazy Dataset.

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
    map_index : take this map of multi-map files (and allow dtseries/dlabel
        inputs); None requires single-map dscalar files.
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
    long = read_cohort(csv, scalar_columns)
    sources = long["source_file"].tolist()
    _check_modality(csv, sources)
    resolved = resolve_sources(csv, sources, relative_to)
    ref, blocks = _check_all(resolved, map_index, progress, threads)
    long = long.assign(_block=range(len(long)))
    scalars = list(dict.fromkeys(long["scalar_name"]))
    for s in scalars:
        _layout.check_hdf5_name(s, "scalar name")
    groups = {s: long[long["scalar_name"] == s] for s in scalars}
    shared = len({len(g) for g in groups.values()}) == 1
    extra = _subject_columns(long)
    coords: dict[str, Any] = {}
    data_vars: dict[str, xr.DataArray] = {}
    base = groups[scalars[0]]
    n_el = ref.n_elements
    for s in scalars:
        g = groups[s]
        dim = "subject" if shared else f"subject_{s}"
        src_name = "source_file" if len(scalars) == 1 else f"source_file_{s}"
        coords[src_name] = (dim, np.asarray(g["source_file"].tolist(), dtype=object))
        for c in extra:
            vals = g[c].to_numpy()
            if shared and s != scalars[0]:
                same = pd.Series(vals).equals(pd.Series(base[c].to_numpy()))
                if same:
                    continue
                coords[f"{c}_{s}"] = (dim, vals)
            elif shared:
                coords[c] = (dim, vals)
            else:
                coords[f"{c}_{s}"] = (dim, vals)
        arr = CohortArray([blocks[i] for i in g["_block"]], n_el)
        token = tokenize(
            csv, s, [(b.path, b.offset, str(b.dtype), b.map_index) for b in arr.blocks]
        )
        chunks = (min(max(1, int(batch_size)), len(g)), n_el)
        darr = da.from_array(
            arr,
            chunks=chunks,
            asarray=False,
            lock=False,
            name=f"cohort-{s}-{token}",
            inline_array=True,
        )
        data_vars[s] = xr.DataArray(
            darr,
            dims=(dim, ELEMENT_DIM),
            attrs={GROUP_ATTR: "scalars", SOURCES_ATTR: src_name},
        )
    voxel = ref.voxel
    coords.update(
        {
            ELEMENT_DIM: (ELEMENT_DIM, np.arange(n_el, dtype=np.int64)),
            "structure": (ELEMENT_DIM, ref.structure.astype(object)),
            "vertex": (ELEMENT_DIM, ref.vertex),
            "voxel_i": (ELEMENT_DIM, voxel[:, 0]),
            "voxel_j": (ELEMENT_DIM, voxel[:, 1]),
            "voxel_k": (ELEMENT_DIM, voxel[:, 2]),
        }
    )
    attrs = {
        "cohort_file": str(Path(csv).resolve()),
        "cohort_format": "wide" if scalar_columns else "long",
        "cifti_template": resolved[0],
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


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


def _structure_table(ds: xr.Dataset) -> tuple[np.ndarray, list[str]]:
    if "structure" not in ds.coords:
        raise ValueError(
            "the Dataset has no 'structure' coordinate along 'element'; "
            "/greyordinates cannot be written"
        )
    return cifti.factorize_structures(np.asarray(ds["structure"].values, dtype=str))


def _stripe_reader(var: xr.DataArray) -> Any:
    subject_dim = next(d for d in var.dims if d != ELEMENT_DIM)
    var = var.transpose(subject_dim, ELEMENT_DIM)

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

    Returns
    -------
    The files written. Each is written to a temporary file and renamed into
    place, so a failure never leaves a partial file.
    """
    names = list(scalars) if scalars is not None else scalar_variables(ds)
    if not names:
        raise ValueError(
            "the Dataset has no scalar variables (subject x element) to write"
        )
    for n in names:
        _layout.check_hdf5_name(n, "scalar name")
        if ELEMENT_DIM not in ds[n].dims or ds[n].ndim != 2:
            raise ValueError(
                f"{n!r} must have dims (subject, element), has {ds[n].dims}"
            )
    modelarray_io.resolve_dtype(dtype)
    modelarray_io.resolve_compression(compression, compression_level, shuffle)
    codes, structures = _structure_table(ds)
    if split_files is None:
        split_files = ds.attrs.get("cohort_format") == "wide"
    target = Path(path)
    if split_files:
        plan = [
            (
                target.with_name(
                    f"{cifti.safe_output_name(n, 'scalar name')}_{target.name}"
                ),
                [n],
            )
            for n in names
        ]
    else:
        plan = [(target, names)]
    for out, _ in plan:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out}: exists; pass overwrite=True to replace it")
    n_el = ds.sizes[ELEMENT_DIM]
    total = n_el * sum(len(v) for _, v in plan)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            desc="writing ModelArray HDF5",
            unit="el",
            unit_scale=True,
            file=sys.stderr,
        )
    written = []
    try:
        for out, group in plan:
            with atomic_output(out, overwrite=overwrite, suffix=".h5") as tmp:
                import h5py

                with h5py.File(tmp, "w") as f:
                    modelarray_io.write_greyordinates(f, codes, structures)
                    for n in group:
                        var = ds[n]
                        sources = _sources_of(ds, n)
                        modelarray_io.write_scalar(
                            f,
                            n,
                            len(sources),
                            n_el,
                            sources,
                            _stripe_reader(var),
                            dtype=dtype,
                            compression=compression,
                            compression_level=compression_level,
                            shuffle=shuffle,
                            chunk_voxels=chunk_voxels,
                            target_chunk_mb=target_chunk_mb,
                            threads=threads,
                            progress=bar.update if bar is not None else None,
                        )
            written.append(out)
    finally:
        if bar is not None:
            bar.close()
    return written


# --------------------------------------------------------------------------
# results to CIFTI
# --------------------------------------------------------------------------


def _template_from_cohort(
    cohort_file: str | os.PathLike[str],
    relative_to: str | os.PathLike[str] | None = None,
) -> str:
    """The first row's ``source_file`` of a long cohort (ModelArrayIO's template)."""
    long = read_cohort(cohort_file)
    first = long["source_file"].iloc[0]
    return resolve_sources(cohort_file, [first], relative_to)[0]


def _pick_template(
    ds_attrs: dict[str, Any] | None,
    example_file: str | os.PathLike[str] | None,
    cohort_file: str | os.PathLike[str] | None,
) -> cifti.Template:
    if example_file is not None and cohort_file is not None:
        raise ValueError("give example_file or cohort_file, not both")
    if example_file is not None:
        tpath = os.fspath(example_file)
        if not os.path.exists(tpath):
            raise FileNotFoundError(f"{tpath}: template file does not exist")
    elif cohort_file is not None:
        tpath = _template_from_cohort(cohort_file)
    elif ds_attrs and ds_attrs.get("cifti_template"):
        tpath = str(ds_attrs["cifti_template"])
    else:
        raise ValueError(
            "no CIFTI template: give example_file= or cohort_file= (ModelArray files "
            "store no brain-model geometry)"
        )
    kind = cifti.cifti_kind_from_name(tpath)
    if kind is None and tpath.endswith(_NIFTI_SUFFIXES):
        raise ClusterH5Error(
            tpath, "template is NIfTI, not CIFTI; NIfTI export is not supported"
        )
    return cifti.load_template(tpath)


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
    template = _pick_template(ds.attrs, example_file, cohort_file)
    name = str(var.attrs.get(NAME_ATTR, var_name))
    return cifti.write_dscalar_rows(
        output_dir,
        name,
        stats,
        np.asarray(var.values),
        template,
        overwrite=overwrite,
        progress=progress,
    )


def export_results(
    in_file: str | os.PathLike[str],
    analysis: str,
    output_dir: str | os.PathLike[str],
    *,
    example_file: str | os.PathLike[str] | None = None,
    cohort_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """``modelarrayio export-results`` for CIFTI, straight from the HDF5 file.

    Reads ``results/<analysis>/results_matrix`` once (not row by row) with its
    statistic names (:func:`modelarray_io.read_results`) and writes the files
    as :func:`to_cifti` does.
    """
    template = _pick_template(None, example_file, cohort_file)
    names, matrix = modelarray_io.read_results(in_file, analysis)
    return cifti.write_dscalar_rows(
        output_dir,
        analysis,
        names,
        matrix,
        template,
        overwrite=overwrite,
        progress=progress,
    )
