"""Shared fixtures: R-written fmristore and ModelArrayIO files, unclosed files."""

from __future__ import annotations

import gc
import os

import pytest
import xarray as xr
from hypothesis import settings

from tests._helpers import FMRISTORE_FIXTURES

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
