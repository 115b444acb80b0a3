"""h5py listings in the format of the fixtures' ``.h5ls.json``, and a way to
take an R-written fixture's content back out with plain h5py.

Both are test helpers: the listing is compared entry by entry with the one
made from the R-written file (by the fixtures' author, not by our code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xarray_clusterh5.fmristore.write import Run


def _dtype_entry(tid: h5py.h5t.TypeID, dtype: np.dtype) -> dict[str, Any]:
    cls = tid.get_class()
    if cls == h5py.h5t.STRING:
        out = {
            "numpy": "object" if tid.is_variable_str() else str(dtype),
            "h5_class": "STRING",
            "size": tid.get_size(),
            "variable_length": bool(tid.is_variable_str()),
            "charset": "UTF8" if tid.get_cset() == h5py.h5t.CSET_UTF8 else "ASCII",
            "strpad": {0: "NULLTERM", 1: "NULLPAD", 2: "SPACEPAD"}[tid.get_strpad()],
        }
        return out
    if cls == h5py.h5t.ENUM:
        return {"numpy": str(dtype), "h5_class": "ENUM", "size": tid.get_size()}
    if cls == h5py.h5t.INTEGER:
        return {
            "numpy": str(dtype),
            "h5_class": "INTEGER",
            "size": tid.get_size(),
            "byte_order": "LE" if tid.get_order() == h5py.h5t.ORDER_LE else "BE",
            "signed": tid.get_sign() == h5py.h5t.SGN_2,
        }
    if cls == h5py.h5t.FLOAT:
        return {
            "numpy": str(dtype),
            "h5_class": "FLOAT",
            "size": tid.get_size(),
            "byte_order": "LE" if tid.get_order() == h5py.h5t.ORDER_LE else "BE",
        }
    raise AssertionError(f"unexpected HDF5 class {cls}")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value[()])
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def listing(path: str | Path) -> dict[str, dict[str, Any]]:
    """Path -> entry, with the keys of the fixtures' ``.h5ls.json``."""
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:

        def attrs_of(obj: h5py.HLObject) -> dict[str, Any]:
            res = {}
            for name in obj.attrs:
                aid = obj.attrs.get_id(name)
                res[name] = {
                    "value": _plain(obj.attrs[name]),
                    "dtype": _dtype_entry(aid.get_type(), aid.dtype),
                    "shape": list(aid.shape),
                }
            return res

        def visit(name: str, obj: h5py.HLObject) -> None:
            p = "/" + name if name else "/"
            if isinstance(obj, h5py.Group):
                out[p] = {
                    "path": p,
                    "kind": "group",
                    "attrs": attrs_of(obj),
                    "members_in_h5py_order": list(obj),
                }
                return
            plist = obj.id.get_create_plist()
            filters = []
            for i in range(plist.get_nfilters()):
                code, _flags, values, fname = plist.get_filter(i)
                filters.append(
                    {"id": code, "name": fname.decode(), "options": list(values)}
                )
            layout = {0: "COMPACT", 1: "CONTIGUOUS", 2: "CHUNKED"}[plist.get_layout()]
            out[p] = {
                "path": p,
                "kind": "dataset",
                "shape_h5py": list(obj.shape),
                "dtype": _dtype_entry(obj.id.get_type(), obj.dtype),
                "layout": layout,
                "chunks": list(obj.chunks) if obj.chunks else None,
                "compression": obj.compression,
                "compression_opts": obj.compression_opts,
                "shuffle": obj.shuffle,
                "filters": filters,
                "maxshape": list(obj.maxshape) if obj.maxshape else None,
                "fillvalue": _plain(obj.fillvalue),
                "attrs": attrs_of(obj),
                "values": _plain(obj[()]) if obj.size <= 64 else None,
            }

        visit("", f)
        f.visititems(visit)
    return out


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def fixture_content(path: str | Path) -> dict[str, Any]:
    """The inputs that produced an R-written file, read back with plain h5py.

    Returns keyword arguments for ``write_experiment`` (without ``path``).
    """
    with h5py.File(path, "r") as f:
        mask_xyz = f["mask"][()].transpose(2, 1, 0).astype(bool)
        cmap = np.atleast_1d(f["cluster_map"][()])
        pixdim = f["header/pixdim"][()]
        runs: dict[str, Run] = {}
        meta: dict[str, dict[str, Any]] = {}
        ids = np.unique(cmap)
        for scan in f["scans"]:
            g = f["scans"][scan]
            data = summary = None
            if "clusters" in g:
                data = {int(c): g["clusters"][f"cluster_{c}"][()].T for c in ids}
            if "clusters_summary" in g:
                summary = g["clusters_summary/summary_data"][()]
            runs[scan] = Run(data=data, summary=summary)
            if "metadata" in g:
                m = {}
                for key, d in g["metadata"].items():
                    v = d[()]
                    if h5py.check_string_dtype(d.dtype):
                        v = _decode(v) if d.ndim == 0 else [_decode(x) for x in v]
                    elif d.ndim == 0:
                        v = d.dtype.type(v)
                    m[key] = v
                meta[scan] = m
        cm = None
        if "clusters/cluster_meta" in f:
            cm = {}
            for col, d in f["clusters/cluster_meta"].items():
                v = d[()]
                if h5py.check_string_dtype(d.dtype):
                    v = np.array([_decode(x) for x in np.atleast_1d(v)], dtype=object)
                cm[col] = np.atleast_1d(v)
        fmt = "2026" if "fmristore_class" in f.attrs else "2025"
        version = (
            _decode(f.attrs["fmristore_version"][0])
            if "fmristore_version" in f.attrs
            else None
        )
    return {
        "mask": mask_xyz,
        "cluster_map": cmap,
        "runs": runs,
        "scan_metadata": meta,
        "cluster_metadata": cm,
        "spacing": tuple(float(s) for s in pixdim[1:4]),
        "format": fmt,
        "fmristore_version": version,
    }
