"""Records the package shares between threads, caches and dask workers are immutable.

A reader's file model, a cohort's data blocks or the storage options of a write
are handed to thread pools and pickled to workers; a field changed on one of
them would change it for every task that holds it. These classes are frozen
dataclasses: assigning a field raises.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest

FROZEN = [
    "_engine.Source",
    "_hdf5.chunk_read._Pipeline",
    "_hdf5.chunk_read.ChunkTable",
    "_hdf5.chunk_write.FilterSpec",
    "cifti.read.DataBlock",
    "cifti.write.Template",
    "fmristore.read.ScanInfo",
    "fmristore.read.Experiment",
    "fmristore.write.Run",
    "modelarray.fixels.FixelTable",
    "modelarray.fixels.FixelRows",
    "modelarray.h5.StorageOptions",
    "modelarray.h5.CohortTable",
    "modelarray.h5.ScalarStream",
    "modelarray.voxels.VoxelGrid",
    "modelarray.voxels.VoxelRows",
    "nifti.read.VolumeInfo",
    "nifti.write.VolumeTemplate",
    "stats.formula.Design",
]


def _class(dotted: str) -> type:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(f"xarray_clusterh5.{module}"), name)


@pytest.mark.parametrize("dotted", FROZEN)
def test_shared_records_refuse_assignment(dotted: str) -> None:
    cls = _class(dotted)
    assert dataclasses.is_dataclass(cls)
    record = object.__new__(cls)  # no field values needed to try an assignment
    for field in dataclasses.fields(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field.name, None)
