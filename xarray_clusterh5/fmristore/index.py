"""``ClusterIndex``: select clusters by id across the ``cluster`` and ``voxel`` dims.

In the flat views the voxels of each cluster are one contiguous block of the
``voxel`` dimension (the concatenation of the on-disk ``cluster_<id>``
datasets). The index spans two coordinates, ``cluster(cluster)`` and
``voxel_cluster(voxel)``, so that ``ds.sel(cluster=3)`` selects the summary
row *and* the voxel block, as a slice: chunk-aligned, one dataset read per
run. ``DataTree.sel`` only accepts dimension names, which is why the
dimension itself is called ``cluster``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr
from xarray import Index
from xarray.core.indexing import IndexSelResult


class ClusterIndex(Index):
    """Index over cluster ids and the per-voxel cluster labels.

    Parameters
    ----------
    cluster_ids : array of int
        Cluster ids, unique (the order of the ``cluster`` dimension).
    n_voxels : array of int
        Number of voxels of each cluster, in the same order.
    cluster_dim, voxel_dim, label_name : str
        Names of the two dimensions and of the per-voxel label coordinate
        (the cluster coordinate has the cluster dimension's name).
    """

    def __init__(
        self,
        cluster_ids: np.ndarray,
        n_voxels: np.ndarray,
        *,
        cluster_dim: str = "cluster",
        voxel_dim: str = "voxel",
        label_name: str = "voxel_cluster",
        attrs: Mapping[str, Mapping[str, Any]] | None = None,
        in_tree: bool = False,
    ) -> None:
        self.cluster_ids = np.asarray(cluster_ids)
        self.n_voxels = np.asarray(n_voxels, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_voxels)]).astype(np.int64)
        self.cluster_dim = cluster_dim
        self.voxel_dim = voxel_dim
        self.label_name = label_name
        self.attrs = {k: dict(v) for k, v in (attrs or {}).items()}
        # DataTree.sel deletes inherited coordinates one at a time, which a kept
        # two-coordinate index cannot survive; in a tree the index therefore
        # steps aside after a selection along its dims (the selection is exact)
        self.in_tree = in_tree
        self._position = {int(c): p for p, c in enumerate(self.cluster_ids.tolist())}

    # -- construction -----------------------------------------------------

    @classmethod
    def from_variables(
        cls, variables: Mapping[Any, xr.Variable], *, options: Mapping[str, Any]
    ) -> ClusterIndex:
        """Build from a 1-D cluster coordinate and a 1-D per-voxel label coordinate.

        The labels must form one contiguous block per cluster, in the order of
        the cluster coordinate (``set_xindex(["cluster", "voxel_cluster"],
        ClusterIndex)``).
        """
        if len(variables) != 2:
            raise ValueError(
                "ClusterIndex needs a cluster and a voxel-label coordinate"
            )
        (n1, v1), (n2, v2) = variables.items()
        if v1.ndim != 1 or v2.ndim != 1 or v1.dims == v2.dims:
            raise ValueError("ClusterIndex needs two 1-D coordinates on two dimensions")
        # the cluster coordinate is the one named after its dimension
        if n2 == v2.dims[0]:
            (n1, v1), (n2, v2) = (n2, v2), (n1, v1)
        ids = np.asarray(v1.values)
        labels = np.asarray(v2.values)
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"cluster ids in {n1!r} are not unique")
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        block_ids = labels[starts]
        if not np.array_equal(block_ids, ids):
            raise ValueError(
                f"{n2!r} must hold one contiguous block per cluster, "
                f"in the order of {n1!r}"
            )
        n_voxels = np.diff(np.r_[starts, len(labels)])
        return cls(
            ids,
            n_voxels,
            cluster_dim=str(v1.dims[0]),
            voxel_dim=str(v2.dims[0]),
            label_name=str(n2),
            attrs={str(n1): v1.attrs, str(n2): v2.attrs},
        )

    def create_variables(
        self, variables: Mapping[Any, xr.Variable] | None = None
    ) -> dict[Hashable, xr.Variable]:
        """NumPy-backed coordinate variables (they stay in memory under dask)."""
        attrs = dict(self.attrs)
        if variables:
            attrs.update({str(k): v.attrs for k, v in variables.items()})
        return {
            self.cluster_dim: xr.Variable(
                (self.cluster_dim,), self.cluster_ids, attrs.get(self.cluster_dim)
            ),
            self.label_name: xr.Variable(
                (self.voxel_dim,),
                np.repeat(self.cluster_ids, self.n_voxels),
                attrs.get(self.label_name),
            ),
        }

    # -- selection --------------------------------------------------------

    def _positions(self, labels: Any) -> np.ndarray:
        values = np.atleast_1d(np.asarray(labels))
        try:
            return np.array([self._position[int(v)] for v in values], dtype=np.int64)
        except KeyError as err:
            raise KeyError(
                f"cluster id {err.args[0]} not found among the "
                f"{len(self.cluster_ids)} clusters {self.cluster_ids.tolist()[:20]}"
            ) from None
        except (TypeError, ValueError) as err:
            raise KeyError(
                f"cluster labels must be integer ids, got {labels!r}"
            ) from err

    def _voxels_of(self, positions: np.ndarray) -> np.ndarray | slice:
        if len(positions) and np.all(np.diff(positions) == 1):
            return slice(
                int(self.offsets[positions[0]]), int(self.offsets[positions[-1] + 1])
            )
        parts = [np.arange(self.offsets[p], self.offsets[p + 1]) for p in positions]
        return np.concatenate(parts) if parts else np.array([], dtype=np.int64)

    def sel(
        self, labels: dict[Any, Any], method: Any = None, tolerance: Any = None
    ) -> IndexSelResult:
        """Select by cluster id: a scalar, a list/array of ids, or a label slice."""
        if method is not None or tolerance is not None:
            raise ValueError("ClusterIndex selects exact cluster ids only (no method=)")
        unknown = set(labels) - {self.cluster_dim, self.label_name}
        if unknown or len(labels) != 1:
            raise ValueError(f"select with {self.cluster_dim}=<id or ids>")
        (label,) = labels.values()
        if isinstance(label, xr.DataArray | xr.Variable):
            if label.ndim > 1 or (
                label.ndim == 1 and label.dims[0] != self.cluster_dim
            ):
                raise ValueError("ClusterIndex does not support vectorized selection")
            label = label.values
        if isinstance(label, slice):
            if label.step not in (None, 1):
                raise ValueError("cluster slices cannot have a step")
            lo = (
                0
                if label.start is None
                else int(np.searchsorted(self.cluster_ids, label.start))
            )
            hi = (
                len(self.cluster_ids)
                if label.stop is None
                else int(np.searchsorted(self.cluster_ids, label.stop, side="right"))
            )
            if not np.all(np.diff(self.cluster_ids) > 0):
                raise KeyError("label slices need ascending cluster ids")
            positions = np.arange(lo, hi)
            c_sel: Any = slice(lo, hi)
        elif np.ndim(label) == 0:
            pos = int(self._positions(label)[0])
            return IndexSelResult(
                {
                    self.cluster_dim: pos,
                    self.voxel_dim: slice(
                        int(self.offsets[pos]), int(self.offsets[pos + 1])
                    ),
                }
            )
        else:
            positions = self._positions(label)
            c_sel = positions
        return IndexSelResult(
            {self.cluster_dim: c_sel, self.voxel_dim: self._voxels_of(positions)}
        )

    def isel(self, indexers: Mapping[Any, Any]) -> ClusterIndex | None:
        """Keep the index when whole clusters are selected on both dims."""
        c_key = indexers.get(self.cluster_dim, slice(None))
        v_key = indexers.get(self.voxel_dim, slice(None))
        if isinstance(c_key, xr.Variable):
            c_key = c_key.values
        if isinstance(v_key, xr.Variable):
            v_key = v_key.values
        if np.ndim(c_key) == 0 and not isinstance(c_key, slice):
            return None  # the cluster dimension is dropped
        if np.ndim(v_key) == 0 and not isinstance(v_key, slice):
            return None
        positions = np.arange(len(self.cluster_ids))[c_key]
        voxels = np.arange(self.offsets[-1])[v_key]
        expected = self._voxels_of(positions)
        if isinstance(expected, slice):
            expected = np.arange(expected.start, expected.stop)
        if not np.array_equal(voxels, expected):
            return None
        if self.in_tree:
            # DataTree.sel removes inherited coordinates one at a time, which
            # a kept two-coordinate index cannot survive, even when every
            # cluster is selected
            return None
        return type(self)(
            self.cluster_ids[positions],
            self.n_voxels[positions],
            cluster_dim=self.cluster_dim,
            voxel_dim=self.voxel_dim,
            label_name=self.label_name,
            attrs=self.attrs,
            in_tree=self.in_tree,
        )

    # -- comparison and display ------------------------------------------

    def equals(self, other: Index, *, exclude: Any = None) -> bool:
        """Equal when both index the same clusters with the same sizes."""
        return (
            isinstance(other, ClusterIndex)
            and np.array_equal(self.cluster_ids, other.cluster_ids)
            and np.array_equal(self.n_voxels, other.n_voxels)
        )

    def rename(
        self, name_dict: Mapping[Any, Hashable], dims_dict: Mapping[Any, Hashable]
    ) -> ClusterIndex:
        """Follow renamed coordinates and dimensions."""
        cluster_dim = str(dims_dict.get(self.cluster_dim, self.cluster_dim))
        return type(self)(
            self.cluster_ids,
            self.n_voxels,
            cluster_dim=cluster_dim,
            voxel_dim=str(dims_dict.get(self.voxel_dim, self.voxel_dim)),
            label_name=str(name_dict.get(self.label_name, self.label_name)),
            attrs=self.attrs,
            in_tree=self.in_tree,
        )

    def _repr_inline_(self, max_width: int) -> str:
        n = int(self.offsets[-1])
        return f"ClusterIndex ({len(self.cluster_ids)} clusters, {n} voxels)"

    def __repr__(self) -> str:
        return f"<{self._repr_inline_(80)}>"
