"""The accessors' methods take exactly the parameters (names, kinds, defaults)
of the functions they call, so ``help(ds.clusterh5.to_fmristore)`` is true."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import xarray as xr

import xarray_clusterh5
from xarray_clusterh5 import conversions
from xarray_clusterh5.accessor import (
    ClusterH5DatasetAccessor,
    ClusterH5DataTreeAccessor,
)
from xarray_clusterh5.fmristore.to_cifti import experiment_to_cifti
from xarray_clusterh5.fmristore.to_h5 import to_fmristore
from xarray_clusterh5.modelarray import cohort, to_images
from xarray_clusterh5.modelarray.lm import lm


def _params(func: Callable[..., Any], skip: int) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(func)
    return [(p.name, p.kind, p.default) for p in list(sig.parameters.values())[skip:]]


PAIRS = [
    (ClusterH5DatasetAccessor.to_fmristore, to_fmristore),
    (ClusterH5DataTreeAccessor.to_fmristore, to_fmristore),
    (ClusterH5DatasetAccessor.lm, lm),
    (ClusterH5DatasetAccessor.to_cifti, conversions.to_cifti),
    (ClusterH5DataTreeAccessor.to_cifti, experiment_to_cifti),
    (ClusterH5DatasetAccessor.to_modelarray, cohort.to_modelarray),
    (ClusterH5DatasetAccessor.export_results, to_images.export_results),
    (ClusterH5DatasetAccessor.to_nifti_4d, to_images.to_nifti_4d),
]


@pytest.mark.parametrize(
    ("method", "function"), PAIRS, ids=[f"{m.__qualname__}" for m, _ in PAIRS]
)
def test_accessor_takes_the_functions_parameters(
    method: Callable[..., Any], function: Callable[..., Any]
) -> None:
    # skip self on the method and the object argument on the function
    assert _params(method, 1) == _params(function, 1)
    assert method.__doc__
    assert "Parameters" in method.__doc__


def test_from_cohort_takes_the_functions_parameters() -> None:
    method = ClusterH5DatasetAccessor.from_cohort  # a staticmethod: no self
    assert _params(method, 0) == _params(cohort.from_cohort, 0)


def test_to_cifti_refuses_options_of_the_other_format(tmp_path) -> None:
    ds = xr.open_dataset(xarray_clusterh5.example_file(), engine="clusterh5")
    with ds, pytest.raises(TypeError, match="clustered experiment takes no analysis"):
        ds.clusterh5.to_cifti(tmp_path, analysis="lm")


def test_help_shows_the_parameters() -> None:
    ds = xr.Dataset()
    text = inspect.signature(ds.clusterh5.to_fmristore).parameters
    assert {"path", "format", "compression", "overwrite", "progress"} <= set(text)
