"""On-disk vocabulary of fmristore files: paths, class strings, dtypes.

Nothing here opens a file or imports xarray; every other module takes its
names from here so that the reader and the writer cannot drift apart.

Shapes are given as h5py sees them: hdf5r (R) reverses every dimension, so an
R matrix ``[nrow, ncol]`` is stored with h5py shape ``(ncol, nrow)``.
"""

from __future__ import annotations

import re
from typing import Final

import numpy as np

# re-exported: fmristore's modules take every name from this module
from xarray_clusterh5._hdf5.names import check_hdf5_name as check_hdf5_name

# --------------------------------------------------------------------------
# fmristore clustered ("parcellated") experiments
# --------------------------------------------------------------------------

MASK: Final = "/mask"  # uint8 (Z, Y, X)
CLUSTER_MAP: Final = "/cluster_map"  # int32 (N,), mask order
VOXEL_COORDS: Final = "/voxel_coords"  # int32 (3, N), 1-based x;y;z rows
HEADER: Final = "/header"
CLUSTERS: Final = "/clusters"
CLUSTER_IDS: Final = "/clusters/cluster_ids"
CLUSTER_META: Final = "/clusters/cluster_meta"
SCANS: Final = "/scans"

HEADER_SCALARS: Final = (
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "qfac",
)
SROWS: Final = ("srow_x", "srow_y", "srow_z")

ATTR_SUMMARY_ONLY: Final = "summary_only"
ATTR_CLASS: Final = "class"
ATTR_ROOT_CLASS: Final = "fmristore_class"
ATTR_ROOT_VERSION: Final = "fmristore_version"
ATTR_N_TIME: Final = "n_time"

CLUSTER_DATASET_RE: Final = re.compile(r"^cluster_(-?[0-9]+)$")

#: Class strings of both generations of fmristore.
FULL_CLASSES: Final = {"2025": "H5ClusterRun", "2026": "H5ParcellatedScan"}
SUMMARY_CLASSES: Final = {
    "2025": "H5ClusterRunSummary",
    "2026": "H5ParcellatedScanSummary",
}
EXPERIMENT_CLASSES: Final = {
    "2025": "H5ClusterExperiment",
    "2026": "H5ParcellatedMultiScan",
}
GENERATIONS: Final = ("2025", "2026")

#: hdf5r's logical type: an enum over uint8 with these members.
R_LOGICAL_ENUM: Final = {"FALSE": 0, "TRUE": 1, "NA": 2}

DATA_DTYPE: Final = np.dtype("<f4")
CLUSTER_MAP_DTYPE: Final = np.dtype("<i4")


def scan_path(scan: str) -> str:
    """Group of one scan."""
    return f"{SCANS}/{scan}"


def cluster_path(scan: str, cluster_id: int) -> str:
    """Dataset of one cluster of one full scan: float32 ``(T, Nc)``.

    fmristore looks names up with ``sprintf("cluster_%d")``: decimal, never
    zero-padded.
    """
    return f"{SCANS}/{scan}/clusters/cluster_{int(cluster_id)}"


def clusters_group(scan: str) -> str:
    """Group holding the ``cluster_<id>`` datasets of a full scan."""
    return f"{SCANS}/{scan}/clusters"


def summary_path(scan: str) -> str:
    """Summary dataset of a scan: float32 ``(K, T)``, rows in ascending id order."""
    return f"{SCANS}/{scan}/clusters_summary/summary_data"


def metadata_group(scan: str) -> str:
    """Group with one dataset per scan-metadata key."""
    return f"{SCANS}/{scan}/metadata"


def generation_of_class(cls: str) -> str | None:
    """The fmristore generation ("2025"/"2026") a scan or root class belongs to."""
    for table in (FULL_CLASSES, SUMMARY_CLASSES, EXPERIMENT_CLASSES):
        for gen, name in table.items():
            if name == cls:
                return gen
    return None
