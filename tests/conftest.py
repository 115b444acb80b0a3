"""Shared fixtures: R-written fmristore and ModelArrayIO files, unclosed files."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import xarray as xr
from hypothesis import settings

DATA = Path(__file__).parent / "data"
FMRISTORE = DATA / "fmristore"
MODELARRAY = DATA / "modelarray"

#: every R-written fmristore fixture, by stem
FMRISTORE_FIXTURES = ("vignette", "vignette_head", "irregular", "irregular_head")

settings.register_profile("ci", deadline=None, print_blob=True, max_examples=60)
settings.register_profile("dev", deadline=None, max_examples=30)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True, scope="session")
def _warn_for_unclosed_files():
    # an unclosed CachingFileManager warns in __del__; filterwarnings=error fails it
    with xr.set_options(warn_for_unclosed_files=True):
        yield


@pytest.fixture(autouse=True)
def _collect_garbage():
    # an unclosed file warns when its manager is collected: collect after each
    # test so the warning fails the test that leaked, not a later one
    yield
    gc.collect()


@pytest.fixture(params=FMRISTORE_FIXTURES)
def fixture_name(request: pytest.FixtureRequest) -> str:
    """The stem of each R-written fmristore fixture in turn."""
    return request.param


def fmristore_path(stem: str) -> Path:
    """Path of an R-written fixture."""
    return FMRISTORE / f"{stem}.h5"


def fmristore_expected(stem: str) -> dict:
    """What R fmristore read back from the fixture (its ``.expected.json``)."""
    return json.loads((FMRISTORE / f"{stem}.expected.json").read_text())
