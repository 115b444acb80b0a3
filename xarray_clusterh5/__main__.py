"""``python -m xarray_clusterh5`` runs the ``clusterh5`` command."""

from __future__ import annotations

import sys

from xarray_clusterh5.cli import main

sys.exit(main())
