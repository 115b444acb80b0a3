"""Every dataclass of the package is frozen, unless listed here with a reason.

A reader's file model, a cohort's data blocks or the storage options of a write
are handed to thread pools and pickled to workers; a field changed on one of
them would change it for every task that holds it. So records are frozen
dataclasses (assigning a field raises) and a changed copy is made with
``dataclasses.replace``. The classes are found by importing every module, so a
new dataclass is held to the rule without being added to a list.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pytest

import xarray_clusterh5

# deliberate exceptions: "module.Class" -> why its fields are assigned
MUTABLE = {
    "_hdf5.chunk_read._Chunk": (
        "the range read fills in raw bytes located earlier, the decode drops "
        "them once inflated; each is owned by one window's read"
    ),
}

# representative records: assigning any field of one raises
REPRESENTATIVE = [
    "_hdf5.chunk_read.ChunkTable",
    "cifti.read.BrainModel",
    "fmristore.read.Experiment",
    "mif.header.MifHeader",
    "modelarray.h5.StorageOptions",
    "stats.formula.Design",
    "stats.ols.OLSResult",
]


def _dataclasses() -> dict[str, type]:
    found = {}
    prefix = f"{xarray_clusterh5.__name__}."
    for info in pkgutil.walk_packages(xarray_clusterh5.__path__, prefix):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            defined_here = getattr(obj, "__module__", None) == module.__name__
            if isinstance(obj, type) and defined_here and dataclasses.is_dataclass(obj):
                found[f"{info.name.removeprefix(prefix)}.{name}"] = obj
    return found


RECORDS = _dataclasses()


def test_the_records_are_found() -> None:
    # the walk reaches every layer (a broken walk would pass the rule vacuously)
    assert set(REPRESENTATIVE) | set(MUTABLE) <= set(RECORDS)
    assert len(RECORDS) >= 30
    layers = {dotted.split(".")[0] for dotted in RECORDS}
    assert {"_engine", "_hdf5", "cifti", "fmristore", "mif", "modelarray"} <= layers
    assert {"nifti", "stats"} <= layers


@pytest.mark.parametrize("dotted", sorted(RECORDS))
def test_every_record_is_frozen(dotted: str) -> None:
    frozen = RECORDS[dotted].__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert frozen is (dotted not in MUTABLE)


@pytest.mark.parametrize("dotted", REPRESENTATIVE)
def test_records_refuse_assignment(dotted: str) -> None:
    cls = RECORDS[dotted]
    record = object.__new__(cls)  # no field values needed to try an assignment
    for field in dataclasses.fields(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field.name, None)
