"""The ``.clusterh5`` accessors on Dataset and DataTree.

They are thin: each method names what fmristore and ModelArray users know and
calls a plain function (``fmristore.ops``, the writers, the CIFTI and ModelArray
modules) with the same parameters, imported when first used so that
registering stays cheap (``tests/test_accessor_signatures.py`` keeps the
parameters in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    import pandas as pd


def _ops() -> Any:
    from xarray_clusterh5.fmristore import ops

    return ops


class _WritesFmristore:
    """``to_fmristore``, shared by both accessors (the views and the tree)."""

    _obj: xr.Dataset | xr.DataTree

    def to_fmristore(
        self,
        path: str | os.PathLike[str],
        *,
        format: Literal["2025", "2026"] | None = None,
        compression: int | None = 4,
        chunks: Mapping[str, int] | None = None,
        overwrite: bool = False,
        progress: bool = False,
        summary_only: Literal["auto", "r"] | bool = "auto",
        threads: int | None = None,
        **kwargs: Any,
    ) -> Path:
        """Write an fmristore file that R fmristore reads.

        Parameters
        ----------
        path
            Output file, written atomically (temporary file, then rename).
        format
            ``"2025"`` or ``"2026"``; default: the generation the object records
            (``attrs["fmristore_generation"]``), else ``"2026"``.
        compression
            gzip level of the voxel datasets (R's default 4; None: none).
        chunks
            Chunk shapes by dataset kind; default R's.
        overwrite
            Replace an existing file.
        progress
            Show a progress bar over the (scan, cluster) blocks.
        summary_only
            The ``summary_only`` attribute rule (see ``write_experiment``).
        threads
            Compression threads (default: the cores available).
        **kwargs
            Passed to :func:`xarray_clusterh5.write_experiment`
            (``nonpositive_ids``, ``non_ascii``, ``fmristore_version``, ...).

        Returns
        -------
        Path
            The written file (see :func:`xarray_clusterh5.to_fmristore`).
        """
        from xarray_clusterh5.fmristore.to_h5 import to_fmristore

        return to_fmristore(
            self._obj, path, format=format, compression=compression, chunks=chunks,
            overwrite=overwrite, progress=progress, summary_only=summary_only,
            threads=threads, **kwargs,
        )  # fmt: skip


@xr.register_dataset_accessor("clusterh5")
class ClusterH5DatasetAccessor(_WritesFmristore):
    """fmristore and ModelArray operations on a clusterh5 Dataset.

    Works on all three views: padded (``xr.open_dataset(path,
    engine="clusterh5")``), one run (``group=SCAN``) and the tree root.
    Indices are 0-based (fmristore's R API is 1-based).
    """

    _obj: xr.Dataset

    def __init__(self, obj: xr.Dataset) -> None:
        self._obj = obj

    # -- what fmristore's experiment object tells -------------------------

    @property
    def view(self) -> str:
        """``"padded"``, ``"run"`` or ``"root"``."""
        return str(_ops().view_of(self._obj))

    @property
    def scan_names(self) -> list[str]:
        """Scan names in fmristore's order (R: ``scan_names(exp)``)."""
        return list(_ops().scan_names(self._obj))

    @property
    def n_scans(self) -> int:
        """Number of scans (R: ``n_scans(exp)``)."""
        return len(self.scan_names)

    def scan_metadata(self) -> dict[str, dict[str, Any]]:
        """Per-scan metadata with on-disk types (R: ``scan_metadata(exp)``)."""
        return dict(_ops().scan_metadata(self._obj))

    def cluster_metadata(self) -> Any:
        """The cluster table as a pandas DataFrame (R: ``cluster_metadata(exp)``)."""
        return _ops().cluster_metadata(self._obj)

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world affine (see ``attrs["affine_source"]``)."""
        return np.asarray(_ops().affine(self._obj))

    def mask(self) -> xr.DataArray:
        """The mask as a boolean (x, y, z) volume (R: ``mask(exp)``)."""
        return _ops().mask_volume(self._obj)

    # -- reading ----------------------------------------------------------

    def series(
        self, mask_index: Sequence[int] | np.ndarray, run: str | None = None
    ) -> xr.DataArray:
        """Voxel series by 0-based mask index (R: ``series(run, i)``, 1-based)."""
        return _ops().series(self._obj, mask_index, run)

    def series_concat(
        self, mask_index: Sequence[int] | np.ndarray, runs: Sequence[str] | None = None
    ) -> xr.DataArray:
        """Series of several full runs stacked in time (R: ``series_concat``)."""
        return _ops().series_concat(self._obj, mask_index, runs)

    def summary_matrix(self, run: str | None = None) -> xr.DataArray:
        """A summary run as (time, cluster) (R: ``as.matrix(summary_run)``)."""
        return _ops().summary_matrix(self._obj, run)

    def matrix_concat(self, runs: Sequence[str] | None = None) -> xr.DataArray:
        """Summary runs stacked in time (R: ``matrix_concat``)."""
        return _ops().matrix_concat(self._obj, runs)

    def cluster_means(self) -> xr.DataArray:
        """Lazy mean time series of every cluster of every full run."""
        return _ops().cluster_means(self._obj)

    def to_volume(self, run: str | None = None, fill_value: float = 0.0) -> np.ndarray:
        """A full run as an (X, Y, Z, T) array, ``fill_value`` outside the mask."""
        return np.asarray(_ops().run_volume(self._obj, run, fill_value))

    def to_nifti(
        self,
        run: str | None = None,
        path: str | os.PathLike[str] | None = None,
        *,
        fill_value: float = 0.0,
        overwrite: bool = False,
    ) -> Any:
        """A full run as a ``nibabel.Nifti1Image`` (saved atomically if ``path``)."""
        img = _ops().to_nifti(self._obj, run, fill_value)
        if path is not None:
            from xarray_clusterh5._hdf5.files import atomic_output

            suffix = ".nii.gz" if os.fspath(path).endswith(".gz") else ".nii"
            with atomic_output(path, overwrite=overwrite, suffix=suffix) as tmp:
                img.to_filename(tmp)
        return img

    # -- views ------------------------------------------------------------

    def set_cluster_index(self) -> xr.Dataset:
        """Attach the ClusterIndex to ``cluster`` / ``voxel_cluster`` again.

        netCDF keeps coordinates but not custom indexes: call this after
        reopening a saved run or root view to select clusters by id again.
        """
        from xarray_clusterh5.fmristore.index import ClusterIndex

        ds = self._obj
        if "voxel_cluster" not in ds.coords:
            raise ValueError("needs 'cluster' and 'voxel_cluster' coordinates")
        return ds.drop_indexes(
            [n for n in ("cluster", "voxel_cluster") if n in ds.xindexes]
        ).set_xindex(["cluster", "voxel_cluster"], ClusterIndex)

    def unpad(self, run: str) -> xr.Dataset:
        """One run of the padded view as the exact run view."""
        return _ops().unpad(self._obj, run)

    def to_tree(self) -> xr.DataTree:
        """The padded view as the exact DataTree."""
        return _ops().to_tree(self._obj)

    # -- writing and conversions -------------------------------------------

    def to_cifti(
        self,
        output_dir: str | os.PathLike[str],
        *,
        runs: Sequence[str] | None = None,
        analysis: str | None = None,
        example_file: str | os.PathLike[str] | None = None,
        cohort_file: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        progress: bool = False,
        parents: bool = False,
    ) -> list[Path]:
        """Write CIFTI files into ``output_dir``.

        A clustered view writes ``<run>.dtseries.nii`` for full runs and
        ``<run>.ptseries.nii`` for summaries; a ModelArray results Dataset
        writes ModelArrayIO's ``<analysis>_<stat>.dscalar.nii`` exports.

        Parameters
        ----------
        output_dir
            Folder for the files.
        runs
            Clustered experiments: the runs to write (default all).
        analysis, example_file, cohort_file, progress
            ModelArray results: the analysis, the CIFTI template (or the cohort
            CSV whose first file is it) and a progress bar.
        overwrite
            Replace existing files.
        parents
            Create missing parent folders of ``output_dir``.

        Returns
        -------
        list of Path
            The files written (see :func:`xarray_clusterh5.conversions.to_cifti`).
        """
        from xarray_clusterh5.conversions import to_cifti

        return to_cifti(
            self._obj, output_dir, runs=runs, analysis=analysis,
            example_file=example_file, cohort_file=cohort_file,
            overwrite=overwrite, progress=progress, parents=parents,
        )  # fmt: skip

    def to_modelarray(
        self,
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
        """Write ModelArray's HDF5 layout, as ``modelarrayio to-modelarray`` does.

        Parameters
        ----------
        path
            Output file (``<scalar>_<name>`` files with ``split_files``).
        compression, compression_level, shuffle
            HDF5 filters of ``scalars/<name>/values`` (ModelArrayIO's defaults).
        chunk_voxels, target_chunk_mb
            Chunk shape rule, as ModelArrayIO's ``--chunk-voxels`` and
            ``--target-chunk-mb``.
        dtype
            Stored dtype of the values.
        split_files
            One file per scalar (default: as ModelArrayIO decides).
        overwrite
            Replace existing files.
        progress
            Show a progress bar over element stripes.
        scalars
            The variables to write (default every scalar; required when the
            Dataset also holds results).
        threads
            Compression threads (default: the cores available).
        parents
            Create missing parent folders.

        Returns
        -------
        list of Path
            The files written (see :func:`xarray_clusterh5.to_modelarray`).
        """
        from xarray_clusterh5.modelarray.cohort import to_modelarray

        return to_modelarray(
            self._obj, path, compression=compression,
            compression_level=compression_level, shuffle=shuffle,
            chunk_voxels=chunk_voxels, target_chunk_mb=target_chunk_mb, dtype=dtype,
            split_files=split_files, overwrite=overwrite, progress=progress,
            scalars=scalars, threads=threads, parents=parents,
        )  # fmt: skip

    def export_results(
        self,
        output_dir: str | os.PathLike[str],
        *,
        analysis: str | None = None,
        mask: str | os.PathLike[str] | None = None,
        index_file: str | os.PathLike[str] | None = None,
        directions_file: str | os.PathLike[str] | None = None,
        example_file: str | os.PathLike[str] | None = None,
        cohort_file: str | os.PathLike[str] | None = None,
        compress: bool = True,
        overwrite: bool = False,
        progress: bool = False,
    ) -> list[Path]:
        """Write one analysis's results as ``modelarrayio export-results`` does.

        Parameters
        ----------
        output_dir
            Folder for the files.
        analysis
            The analysis (default: the only one in the Dataset).
        mask
            NIfTI voxel results: the group mask (one volume per statistic).
        index_file, directions_file
            MIF fixel results: the fixel index and directions images.
        example_file, cohort_file
            CIFTI results: the template, or the cohort CSV whose first file is
            it. Each of these defaults to what ``from_cohort`` recorded.
        compress
            Write ``.nii.gz`` / ``.mif.gz``.
        overwrite
            Replace existing files.
        progress
            Show a progress bar.

        Returns
        -------
        list of Path
            The files written (see ``modelarray.to_images.export_results``).
        """
        from xarray_clusterh5.modelarray.to_images import export_results

        return export_results(
            self._obj, output_dir, analysis=analysis, mask=mask,
            index_file=index_file, directions_file=directions_file,
            example_file=example_file, cohort_file=cohort_file, compress=compress,
            overwrite=overwrite, progress=progress,
        )  # fmt: skip

    def to_nifti_4d(
        self,
        path: str | os.PathLike[str],
        *,
        scalar: str | None = None,
        mask: str | os.PathLike[str] | None = None,
        fill_value: float = 0.0,
        overwrite: bool = False,
    ) -> Path:
        """A voxel-wise scalar as one 4-D NIfTI, a volume per subject.

        Parameters
        ----------
        path
            Output ``.nii`` or ``.nii.gz``, written atomically.
        scalar
            The scalar variable (default: the only one).
        mask
            The group mask giving header and affine (default
            ``attrs["mask_file"]``); values are placed by ``i, j, k``.
        fill_value
            Value outside the mask.
        overwrite
            Replace an existing file.

        Returns
        -------
        Path
            The written file (see ``modelarray.to_images.to_nifti_4d``).
        """
        from xarray_clusterh5.modelarray.to_images import to_nifti_4d

        return to_nifti_4d(
            self._obj, path, scalar=scalar, mask=mask, fill_value=fill_value,
            overwrite=overwrite,
        )  # fmt: skip

    def lm(
        self,
        formula: str,
        phenotypes: pd.DataFrame | None = None,
        *,
        scalar: str | None = None,
        full_outputs: bool = False,
        var_terms: Sequence[str] = ("estimate", "statistic", "p.value"),
        var_model: Sequence[str] = ("adj.r.squared", "p.value"),
        correct_p_value_terms: Sequence[str] | str = ("fdr",),
        correct_p_value_model: Sequence[str] | str = ("fdr",),
        num_subj_lthr_abs: float = 10,
        num_subj_lthr_rel: float = 0.2,
        element_subset: slice | Sequence[int] | np.ndarray | None = None,
        chunk_size: int | None = None,
    ) -> xr.DataArray:
        """R ``ModelArray.lm(formula, data, phenotypes, scalar, ...)`` at every element.

        Parameters
        ----------
        formula
            An R formula, e.g. ``"FA ~ age + sex"``; the response names a scalar.
        phenotypes
            One row per subject, matched through ``source_file``; default: the
            cohort's own coordinates along ``subject``.
        scalar
            The scalar variable (default: the formula's response).
        full_outputs, var_terms, var_model
            Which statistics to keep, as ``full.outputs``, ``var.terms``,
            ``var.model`` in R.
        correct_p_value_terms, correct_p_value_model
            ``p.adjust`` methods applied over all fitted elements.
        num_subj_lthr_abs, num_subj_lthr_rel
            ModelArray's rule for elements with too few subjects.
        element_subset
            0-based elements to fit (R's ``element.subset`` is 1-based).
        chunk_size
            Elements per dask task (default: the data's own chunks).

        Returns
        -------
        xarray.DataArray
            Lazy ``(stat, element)`` in ModelArray's names (see
            :func:`xarray_clusterh5.modelarray.lm.lm`).
        """
        from xarray_clusterh5.modelarray.lm import lm

        return lm(
            self._obj, formula, phenotypes, scalar=scalar, full_outputs=full_outputs,
            var_terms=var_terms, var_model=var_model,
            correct_p_value_terms=correct_p_value_terms,
            correct_p_value_model=correct_p_value_model,
            num_subj_lthr_abs=num_subj_lthr_abs, num_subj_lthr_rel=num_subj_lthr_rel,
            element_subset=element_subset, chunk_size=chunk_size,
        )  # fmt: skip

    @staticmethod
    def from_cohort(
        cohort_csv: str | os.PathLike[str],
        *,
        scalar_columns: Sequence[str] | None = None,
        batch_size: int = 64,
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
        """``xr.Dataset.clusterh5.from_cohort(csv)``: a ModelArrayIO cohort, lazily.

        Parameters
        ----------
        cohort_csv
            The cohort table (long, or wide with ``scalar_columns``).
        scalar_columns
            Wide tables: the columns naming each scalar's files.
        batch_size
            Subjects read per dask task.
        relative_to
            Base of relative file names: None is ModelArrayIO's rule (the
            working directory, then the CSV's folder with a warning); ``"cwd"``,
            ``"csv"`` or a folder uses only that.
        storage_options
            fsspec options (credentials, headers) for file names that are URLs.
        map_index
            CIFTI files with several maps: the one to read.
        mask
            NIfTI voxel cohorts: the group mask.
        index_file, directions_file
            MIF fixel cohorts: the fixel index and directions images.
        allow_affine_mismatch
            Accept NIfTI images whose affine differs from the mask's (warns).
        progress
            Show a progress bar while checking the files.
        threads
            Threads reading file headers (default up to 4).

        Returns
        -------
        xarray.Dataset
            ``<scalar>(subject, element)`` (see :func:`xarray_clusterh5.from_cohort`).
        """
        from xarray_clusterh5.modelarray.cohort import from_cohort

        return from_cohort(
            cohort_csv, scalar_columns=scalar_columns, batch_size=batch_size,
            relative_to=relative_to, storage_options=storage_options,
            map_index=map_index, mask=mask,
            index_file=index_file, directions_file=directions_file,
            allow_affine_mismatch=allow_affine_mismatch, progress=progress,
            threads=threads,
        )  # fmt: skip


@xr.register_datatree_accessor("clusterh5")
class ClusterH5DataTreeAccessor(_WritesFmristore):
    """fmristore operations on the exact DataTree (root geometry, a node per scan)."""

    _obj: xr.DataTree

    def __init__(self, obj: xr.DataTree) -> None:
        self._obj = obj

    @property
    def scan_names(self) -> list[str]:
        """Scan names in fmristore's order."""
        return list(self._obj.children)

    @property
    def n_scans(self) -> int:
        """Number of scans."""
        return len(self._obj.children)

    def run(self, name: str) -> xr.Dataset:
        """One scan as a run-view Dataset, with the root's geometry."""
        node = self._obj[name]
        assert isinstance(node, xr.DataTree)
        ds = node.to_dataset(inherit="all_coords")
        ds.attrs = {**self._obj.attrs, **node.attrs}
        ds.attrs["clusterh5_view"] = "run"
        ds.attrs.pop("scans", None)
        return ds

    def set_cluster_index(self) -> xr.DataTree:
        """Attach the ClusterIndex to the root again (e.g. after netCDF)."""
        from xarray_clusterh5.fmristore.index import ClusterIndex

        root = self._obj.to_dataset()
        root = root.drop_indexes(
            [n for n in ("cluster", "voxel_cluster") if n in root.xindexes]
        )
        variables = {n: root[n].variable for n in ("cluster", "voxel_cluster")}
        index = ClusterIndex.from_variables(variables, options={})
        index.in_tree = True
        root = root.assign_coords(xr.Coordinates.from_xindex(index))
        nodes = {"/": root}
        for name, child in self._obj.children.items():
            nodes[f"/{name}"] = child.to_dataset(inherit=False)
        return xr.DataTree.from_dict(nodes, name=self._obj.name)

    def scan_metadata(self) -> dict[str, dict[str, Any]]:
        """Per-scan metadata with on-disk types."""
        return {n: _ops().scan_metadata(self.run(n))[n] for n in self.scan_names}

    def cluster_metadata(self) -> Any:
        """The cluster table as a pandas DataFrame."""
        return _ops().cluster_metadata(self._obj.to_dataset())

    def series(self, mask_index: Sequence[int] | np.ndarray, run: str) -> xr.DataArray:
        """Voxel series of one run by 0-based mask index."""
        return _ops().series(self.run(run), mask_index)

    def cluster_means(self) -> dict[str, xr.DataArray]:
        """Lazy cluster means of every full run, by scan name."""
        return {
            n: _ops().cluster_means(self.run(n))
            for n in self.scan_names
            if "data" in self._obj[n].data_vars
        }

    def to_padded(self) -> xr.Dataset:
        """The tree as the padded ``(run, cluster, voxel, time)`` Dataset."""
        return _ops().tree_to_padded(self._obj)

    def to_cifti(
        self,
        output_dir: str | os.PathLike[str],
        *,
        runs: Sequence[str] | None = None,
        overwrite: bool = False,
        parents: bool = False,
    ) -> list[Path]:
        """Full runs to ``<run>.dtseries.nii``, summaries to ``<run>.ptseries.nii``.

        Parameters
        ----------
        output_dir
            Folder for the files.
        runs
            The runs to write (default all).
        overwrite
            Replace existing files.
        parents
            Create missing parent folders of ``output_dir``.

        Returns
        -------
        list of Path
            The files written.
        """
        from xarray_clusterh5.fmristore.to_cifti import experiment_to_cifti

        return experiment_to_cifti(
            self._obj, output_dir, runs=runs, overwrite=overwrite, parents=parents
        )
