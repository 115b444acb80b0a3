"""The ``.clusterh5`` accessors on Dataset and DataTree (placeholder, filled in below)."""

from __future__ import annotations
