"""``python -m xarray_clusterh5`` runs the ``clusterh5`` command."""

from __future__ import annotations

import sys

from xarray_clusterh5.cli import main

if __name__ == "__main__":  # not when imported (e.g. by the docs build)
    sys.exit(main())
