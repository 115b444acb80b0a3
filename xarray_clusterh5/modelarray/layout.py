"""On-disk vocabulary of ModelArray's HDF5 files and ModelArrayIO's exports.

Paths as h5py sees them (R reverses every dimension), the element tables'
column names and the export file-naming rule. Nothing here opens a file or
imports h5py or xarray.
"""

from __future__ import annotations

from typing import Final

from xarray_clusterh5._hdf5.names import safe_output_name

#: int64 (2, n): vertex_id, structure_id (CIFTI dense cohorts)
GREYORDINATES: Final = "/greyordinates"
#: string datasets parcel_id (pscalar) or parcel_id_from / parcel_id_to (pconn)
PARCELS: Final = "/parcels"
SCALARS: Final = "/scalars"
RESULTS: Final = "/results"

GREYORDINATE_COLUMNS: Final = ("vertex_id", "structure_id")


def values_path(scalar: str) -> str:
    """``/scalars/<name>/values``: (n_subjects, n_elements) in h5py order."""
    return f"{SCALARS}/{scalar}/values"


def column_names_path(scalar: str) -> str:
    """``/scalars/<name>/column_names``: the cohort's ``source_file`` strings."""
    return f"{SCALARS}/{scalar}/column_names"


def results_matrix_path(analysis: str) -> str:
    """``/results/<analysis>/results_matrix``: (n_stats, n_elements), h5py order."""
    return f"{RESULTS}/{analysis}/results_matrix"


def component_names(names: list[str] | None, n_rows: int) -> list[str]:
    """Statistic names with ModelArrayIO's ``component001``... for missing ones."""
    if names is None:
        names = [""] * n_rows
    return [n if n else f"component{i + 1:03d}" for i, n in enumerate(names)]


def export_file_names(analysis: str, stats: list[str]) -> list[tuple[int, str, bool]]:
    """``(row, file stem, is_1m)`` of every file an export writes, in order.

    ModelArrayIO writes ``<analysis>_<stat>`` for each row and, when the
    sanitised stat contains ``p.value``, ``<analysis>_<stat with p.value ->
    1m.p.value>`` holding ``1 - value``.
    """
    a = safe_output_name(analysis, "analysis name")
    out: list[tuple[int, str, bool]] = []
    for i, stat in enumerate(stats):
        s = safe_output_name(stat, "statistic name")
        out.append((i, f"{a}_{s}", False))
        if "p.value" in s:
            out.append((i, f"{a}_{s.replace('p.value', '1m.p.value')}", True))
    return out


def split_output_name(scalar: str, output_name: str) -> str:
    """ModelArrayIO's split-file name ``<scalar>_<output name>`` (sanitised)."""
    return f"{safe_output_name(scalar, 'scalar name')}_{output_name}"


#: int64 (4, n_voxels): voxel_id, i, j, k (voxel-wise and fixel-wise cohorts)
VOXELS: Final = "/voxels"
VOXEL_COLUMNS: Final = ("voxel_id", "i", "j", "k")
#: float64 (5, n_fixels): fixel_id, voxel_id, x, y, z (fixel-wise cohorts)
FIXELS: Final = "/fixels"
FIXEL_COLUMNS: Final = ("fixel_id", "voxel_id", "x", "y", "z")
