"""CIFTI-2 input and output for ModelArray cohorts and clustered experiments.

Reading a cohort of dense scalar files is dominated, in ModelArrayIO, by nibabel
re-parsing every file's XML header. Here the first file of a cohort is parsed
once with nibabel (:func:`read_reference`); every other file only has its
540-byte NIfTI-2 header and its CIFTI extension bytes read, and the brain-model
part of the XML is compared byte for byte with the reference
(:func:`check_file`). When the bytes differ (another writer formats numbers
differently) the file is parsed with nibabel and its brain-model axis compared
strictly (structures, vertex and voxel indices, affine, volume shape), so a file
with the same greyordinate count but another mesh or mask is refused, unlike
ModelArrayIO. The data block is then read directly with ``os.pread`` at
``vox_offset`` (:func:`read_columns`); files with scaling or unusual data types
fall back to nibabel.

Writing dscalar exports copies the template's header bytes and appends the row
(:func:`write_dscalar_rows`), which is what nibabel writes for a nibabel-written
template and equal at the nibabel level (axes and data) for any other; templates
with scaling or integer types go through nibabel.

:func:`write_dtseries` and :func:`write_ptseries` are NumPy-level writers for the
clustered-experiment side. No xarray here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.cifti2 import cifti2_axes

from xarray_clusterh5._hdf5.files import (
    READ_ERRORS,
    ClusterH5Error,
    CorruptFileError,
    atomic_output,
    named_errors,
)

NIFTI2_HEADER_SIZE = 540
CIFTI_ECODE = 32

#: NIfTI intent codes of the CIFTI-2 file types (NIFTI_INTENT_CONNECTIVITY_*)
CIFTI_INTENTS: dict[int, str] = {
    3000: "unknown",
    3001: "dconn",
    3002: "dtseries",
    3003: "pconn",
    3004: "ptseries",
    3006: "dscalar",
    3007: "dlabel",
    3008: "pscalar",
    3009: "pdconn",
    3010: "dpconn",
    3011: "pconnseries",
    3012: "pconnscalar",
}
#: dense types whose second axis is a brain-model axis and first axis a list of maps
DENSE_MAP_KINDS = ("dscalar", "dtseries", "dlabel")
#: parcellated types ModelArrayIO converts (and exports to)
PARCEL_KINDS = ("pscalar", "pconn")
#: compound extensions that mark a file as CIFTI (ModelArrayIO knows only three)
CIFTI_KINDS = (
    "dscalar", "dtseries", "dlabel", "dconn", "pscalar", "ptseries", "plabel",
    "pconn", "pdconn", "dpconn", "pconnseries", "pconnscalar", "dfan", "fiberTemp",
)  # fmt: skip

#: what nibabel raises on damaged NIfTI/CIFTI files, besides OSError and friends
NIBABEL_ERRORS: tuple[type[BaseException], ...] = (
    *READ_ERRORS,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
)

# data types read without nibabel: exact conversion to float32/float64
_FAST_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2"}


def cifti_kind_from_name(path: str | os.PathLike[str]) -> str | None:
    """The CIFTI type named by a file's compound extension (``dscalar``...), or None."""
    name = os.fspath(path)
    for kind in CIFTI_KINDS:
        if name.endswith(f".{kind}.nii"):
            return kind
    return None


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


@dataclass
class BrainModel:
    """The brain-model axis of a cohort's first file, with cheap comparison bytes.

    Attributes
    ----------
    structure : (n,) structure name of each greyordinate (``CIFTI_STRUCTURE_...``).
    vertex : (n,) surface vertex index, -1 for voxels.
    voxel : (n, 3) voxel indices i, j, k, -1 for vertices.
    nvertices : surface structure -> number of vertices of its mesh.
    affine, volume_shape : the volume of the voxels (None without voxels).
    xml : the bytes of the ``<MatrixIndicesMap>`` of the brain-model dimension,
        as written in the file; other files are compared against them.
    path : the file.
    """

    structure: np.ndarray
    vertex: np.ndarray
    voxel: np.ndarray
    nvertices: dict[str, int]
    affine: np.ndarray | None
    volume_shape: tuple[int, int, int] | None
    xml: bytes
    path: str

    @property
    def n_elements(self) -> int:
        """Number of greyordinates."""
        return int(self.structure.shape[0])

    @cached_property
    def axis(self) -> cifti2_axes.BrainModelAxis:
        """The same brain model as a nibabel ``BrainModelAxis``."""
        return cifti2_axes.BrainModelAxis(
            self.structure,
            voxel=self.voxel,
            vertex=self.vertex,
            affine=self.affine,
            volume_shape=self.volume_shape,
            nvertices=self.nvertices,
        )

    def structure_table(self) -> tuple[np.ndarray, list[str]]:
        """ModelArrayIO's ``structure_id`` codes and names (first-appearance order)."""
        return factorize_structures(self.structure)

    def same_as(self, other: BrainModel) -> bool:
        """Strict equality: structures, vertices, voxels, meshes and volume."""
        return (
            np.array_equal(self.structure, other.structure)
            and np.array_equal(self.vertex, other.vertex)
            and np.array_equal(self.voxel, other.voxel)
            and self.nvertices == other.nvertices
            and self.volume_shape == other.volume_shape
            and (
                (self.affine is None and other.affine is None)
                or (
                    self.affine is not None
                    and other.affine is not None
                    and np.allclose(self.affine, other.affine)
                )
            )
        )

    @classmethod
    def from_axis(
        cls, axis: cifti2_axes.BrainModelAxis, xml: bytes, path: str
    ) -> BrainModel:
        """From a nibabel axis (the slow path, for XML the fast parser refuses)."""
        shape = axis.volume_shape
        return cls(
            np.asarray(axis.name, dtype=str),
            np.asarray(axis.vertex, dtype=np.int64),
            np.asarray(axis.voxel, dtype=np.int64).reshape(-1, 3),
            {str(k): int(v) for k, v in axis.nvertices.items()},
            None if axis.affine is None else np.asarray(axis.affine, dtype=float),
            None if shape is None else tuple(int(x) for x in shape),
            xml,
            path,
        )


_BM_RE = re.compile(rb"<BrainModel\b([^>]*?)(?:/>|>(.*?)</BrainModel>)", re.S)
_VOL_RE = re.compile(rb"<Volume\b([^>]*)>(.*?)</Volume>", re.S)
_TRANSFORM_RE = re.compile(
    rb"<TransformationMatrixVoxelIndicesIJKtoXYZ\b([^>]*)>(.*?)<", re.S
)


def _xml_attr(tag: bytes, name: str) -> str | None:
    m = re.search(rb"\b" + name.encode() + rb'\s*=\s*"([^"]*)"', tag)
    return None if m is None else m.group(1).decode()


def _ints(text: bytes) -> np.ndarray:
    return np.array(text.split(), dtype=np.int64)


def parse_brain_models(bm_xml: bytes, n_elements: int, path: str) -> BrainModel | None:
    """Parse a brain-model ``MatrixIndicesMap`` without nibabel (fast), or None.

    nibabel spends about a second building a 91k-greyordinate axis; this reads
    the same numbers with one regular expression and ``np.array(split())``.
    Anything unexpected (entities, counts that do not add up) returns None and
    the caller falls back to nibabel.
    """
    if b"&" in bm_xml:
        return None
    structure = np.empty(n_elements, dtype=object)
    vertex = np.full(n_elements, -1, dtype=np.int64)
    voxel = np.full((n_elements, 3), -1, dtype=np.int64)
    nvertices: dict[str, int] = {}
    pos = 0
    has_voxels = False
    for m in _BM_RE.finditer(bm_xml):
        tag, body = m.group(1), m.group(2) or b""
        try:
            offset = int(_xml_attr(tag, "IndexOffset") or -1)
            count = int(_xml_attr(tag, "IndexCount") or -1)
        except ValueError:
            return None
        mtype = _xml_attr(tag, "ModelType")
        name = _xml_attr(tag, "BrainStructure")
        if offset != pos or count < 0 or pos + count > n_elements or not name:
            return None
        structure[pos : pos + count] = name
        if mtype == "CIFTI_MODEL_TYPE_SURFACE":
            inner = re.search(rb"<VertexIndices>(.*?)</VertexIndices>", body, re.S)
            nv = _xml_attr(tag, "SurfaceNumberOfVertices")
            if inner is None or nv is None:
                return None
            idx = _ints(inner.group(1))
            if idx.size != count:
                return None
            vertex[pos : pos + count] = idx
            nvertices[name] = int(nv)
        elif mtype == "CIFTI_MODEL_TYPE_VOXELS":
            inner = re.search(rb"<VoxelIndicesIJK>(.*?)</VoxelIndicesIJK>", body, re.S)
            if inner is None:
                return None
            idx = _ints(inner.group(1))
            if idx.size != 3 * count:
                return None
            voxel[pos : pos + count] = idx.reshape(count, 3)
            has_voxels = True
        else:
            return None
        pos += count
    if pos != n_elements:
        return None
    affine = None
    volume_shape = None
    if has_voxels:
        vol = _VOL_RE.search(bm_xml)
        if vol is None:
            return None
        dims = _xml_attr(vol.group(1), "VolumeDimensions")
        tr = _TRANSFORM_RE.search(vol.group(2))
        if dims is None or tr is None:
            return None
        volume_shape = tuple(int(d) for d in dims.split(","))
        values = np.array(tr.group(2).split(), dtype=float)
        if values.size != 16 or len(volume_shape) != 3:
            return None
        exponent = int(_xml_attr(tr.group(1), "MeterExponent") or -3)
        affine = values.reshape(4, 4)
        affine[:3] *= 10.0 ** (exponent + 3)  # to millimetres, as nibabel does
    return BrainModel(
        structure.astype(str),
        vertex,
        voxel,
        nvertices,
        affine,
        volume_shape,
        bm_xml,
        path,
    )


def _brain_model_of(path: str, bm_xml: bytes, n_el: int) -> BrainModel:
    """Fast parse, else nibabel."""
    model = parse_brain_models(bm_xml, n_el, path)
    if model is not None:
        return model
    try:
        axis = nib.load(path).header.get_axis(1)
    except Exception as err:
        raise ClusterH5Error(
            path, f"nibabel cannot read its CIFTI-2 header: {err}"
        ) from err
    if not isinstance(axis, cifti2_axes.BrainModelAxis):
        raise ClusterH5Error(
            path, f"second axis is {type(axis).__name__}, not brain models"
        )
    if len(axis) != n_el:
        raise ClusterH5Error(
            path, f"{len(axis)} brain-model elements but {n_el} columns"
        )
    return BrainModel.from_axis(axis, bm_xml, path)


def factorize_structures(
    names: Sequence[str] | np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """Codes and unique names in order of first appearance (``pandas.factorize``)."""
    arr = np.asarray(names, dtype=str)
    uniq, first, inverse = np.unique(arr, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse].astype(np.int64), [str(u) for u in uniq[order]]


@dataclass
class ParcelModel:
    """The parcels of a pscalar or pconn cohort's first file.

    Attributes
    ----------
    kind : ``"pscalar"`` or ``"pconn"``.
    axes : the nibabel axes of the file (the scalar axis is the first file's).
    xml : the bytes other files must share (see ``_parcels_xml``).
    path : the file.
    """

    kind: str
    axes: tuple[Any, Any]
    xml: bytes
    path: str

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of a pconn matrix; (1, n_parcels) for pscalar."""
        if self.kind == "pconn":
            return len(self.axes[0]), len(self.axes[1])
        return 1, len(self.axes[1])

    @property
    def n_elements(self) -> int:
        """Values per subject: parcels (pscalar) or rows x columns (pconn)."""
        rows, cols = self.shape
        return rows * cols

    def parcel_arrays(self) -> dict[str, np.ndarray]:
        """ModelArrayIO's ``/parcels`` datasets."""
        if self.kind == "pconn":
            return {
                "parcel_id_from": np.asarray(self.axes[0].name, dtype=str),
                "parcel_id_to": np.asarray(self.axes[1].name, dtype=str),
            }
        return {"parcel_id": np.asarray(self.axes[1].name, dtype=str)}

    def element_names(self) -> dict[str, np.ndarray]:
        """Per-element parcel names (pconn: row-major flattening, as ModelArrayIO)."""
        if self.kind == "pconn":
            rows, cols = self.shape
            arrays = self.parcel_arrays()
            return {
                "parcel_from": np.repeat(arrays["parcel_id_from"], cols),
                "parcel_to": np.tile(arrays["parcel_id_to"], rows),
            }
        return {"parcel": self.parcel_arrays()["parcel_id"]}


def _parcel_model_of(path: str, kind: str, xml: bytes) -> ParcelModel:
    try:
        img = nib.load(path)
        axes = (img.header.get_axis(0), img.header.get_axis(1))
    except Exception as err:
        raise ClusterH5Error(
            path, f"nibabel cannot read its CIFTI-2 header: {err}"
        ) from err
    return ParcelModel(kind, axes, xml, path)


@dataclass(frozen=True)
class DataBlock:
    """Where one file's map lives on disk (or that nibabel must read it)."""

    path: str
    offset: int
    dtype: np.dtype
    n_maps: int
    n_elements: int
    map_index: int = 0
    use_nibabel: bool = False
    slope: float = 1.0
    inter: float = 0.0
    #: a pconn matrix (n_maps rows x n_elements columns), read flattened row-major
    pconn: bool = False


@dataclass
class _Header:
    path: str
    hdr: np.ndarray = field(repr=False)
    endian: str
    raw: bytes = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.hdr[key][()]


def _read_header(path: str) -> _Header:
    """Read the NIfTI-2 header and every byte up to ``vox_offset``."""
    try:
        fh = open(path, "rb")  # noqa: SIM115  (closed below, also on error)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    with fh:
        head = fh.read(NIFTI2_HEADER_SIZE)
        if len(head) < 4:
            raise ClusterH5Error(path, "is empty or truncated, not a CIFTI-2 file")
        size_le = int.from_bytes(head[:4], "little")
        size_be = int.from_bytes(head[:4], "big")
        if size_le == 348 or size_be == 348:
            raise ClusterH5Error(path, "is a NIfTI-1 file; CIFTI-2 files use NIfTI-2")
        if head[:2] == b"\x1f\x8b":
            raise ClusterH5Error(path, "is gzip-compressed; CIFTI-2 files are not")
        if size_le == NIFTI2_HEADER_SIZE:
            endian = "<"
        elif size_be == NIFTI2_HEADER_SIZE:
            endian = ">"
        else:
            raise ClusterH5Error(path, "not a NIfTI-2/CIFTI-2 file (bad header size)")
        if len(head) < NIFTI2_HEADER_SIZE:
            raise ClusterH5Error(path, "truncated NIfTI-2 header")
        dt = nib.nifti2.header_dtype.newbyteorder(endian)
        hdr = np.frombuffer(head, dtype=dt, count=1)[0]
        if bytes(hdr["magic"])[:3] != b"n+2":
            raise ClusterH5Error(path, "not a single-file NIfTI-2 (magic is not n+2)")
        vox_offset = int(hdr["vox_offset"])
        if vox_offset < NIFTI2_HEADER_SIZE + 4:
            raise ClusterH5Error(path, "has no CIFTI extension (vox_offset too small)")
        size = os.fstat(fh.fileno()).st_size
        if vox_offset > size:
            raise CorruptFileError(
                path,
                f"vox_offset {vox_offset} is past the end of the file ({size} "
                "bytes): truncated, or a damaged header",
            )
        rest = fh.read(vox_offset - NIFTI2_HEADER_SIZE)
        if len(rest) < vox_offset - NIFTI2_HEADER_SIZE:
            raise ClusterH5Error(
                path, "truncated: the file ends inside the header extension"
            )
    return _Header(path, hdr, endian, head + rest)


def _cifti_xml(h: _Header) -> bytes:
    """The CIFTI XML (extension code 32) of a header."""
    raw = h.raw
    pos = NIFTI2_HEADER_SIZE
    if raw[pos] == 0:
        raise ClusterH5Error(h.path, "has no NIfTI extensions, so no CIFTI XML")
    pos += 4
    order = "little" if h.endian == "<" else "big"
    while pos + 8 <= len(raw):
        esize = int.from_bytes(raw[pos : pos + 4], order, signed=True)
        ecode = int.from_bytes(raw[pos + 4 : pos + 8], order, signed=True)
        if esize < 8 or pos + esize > len(raw):
            break
        if ecode == CIFTI_ECODE:
            return raw[pos + 8 : pos + esize].rstrip(b"\x00")
        pos += esize
    raise ClusterH5Error(h.path, "has no CIFTI-2 extension (code 32) in its header")


def _map_xml(xml: bytes, index_type: bytes) -> bytes | None:
    """The first ``<MatrixIndicesMap ...{index_type}...>...</MatrixIndicesMap>``."""
    start = 0
    while True:
        i = xml.find(b"<MatrixIndicesMap", start)
        if i < 0:
            return None
        tag_end = xml.find(b">", i)
        if tag_end < 0:
            return None
        if xml[tag_end - 1 : tag_end] == b"/":  # empty element, e.g. a series axis
            start = tag_end + 1
            continue
        end = xml.find(b"</MatrixIndicesMap>", tag_end)
        if end < 0:
            return None
        if index_type in xml[i:tag_end]:
            return xml[i : end + len(b"</MatrixIndicesMap>")]
        start = end + 1


def _brain_model_xml(xml: bytes) -> bytes | None:
    """The brain-model ``MatrixIndicesMap`` bytes."""
    return _map_xml(xml, b"CIFTI_INDEX_TYPE_BRAIN_MODELS")


def _parcels_xml(xml: bytes, kind: str) -> bytes | None:
    """The bytes two files of a parcellated cohort must share.

    pscalar: the parcels map (the scalar map holds each subject's map name);
    pconn: every map (both axes are parcels).
    """
    if kind == "pscalar":
        return _map_xml(xml, b"CIFTI_INDEX_TYPE_PARCELS")
    i = xml.find(b"<MatrixIndicesMap")
    j = xml.rfind(b"</MatrixIndicesMap>")
    return None if i < 0 or j < 0 else xml[i : j + len(b"</MatrixIndicesMap>")]


_AXIS_KINDS: dict[tuple[str, str], str] = {
    ("SCALARS", "BRAIN_MODELS"): "dscalar",
    ("SERIES", "BRAIN_MODELS"): "dtseries",
    ("LABELS", "BRAIN_MODELS"): "dlabel",
    ("BRAIN_MODELS", "BRAIN_MODELS"): "dconn",
    ("SCALARS", "PARCELS"): "pscalar",
    ("SERIES", "PARCELS"): "ptseries",
    ("LABELS", "PARCELS"): "plabel",
    ("PARCELS", "PARCELS"): "pconn",
}


def _axis_types(xml: bytes) -> dict[int, str]:
    """``{dimension: CIFTI_INDEX_TYPE_ suffix}`` from the MatrixIndicesMap tags."""
    types: dict[int, str] = {}
    for m in re.finditer(rb"<MatrixIndicesMap\b([^>]*)>", xml):
        tag = m.group(1)
        dims = re.search(rb'AppliesToMatrixDimension\s*=\s*"([^"]*)"', tag)
        kind = re.search(
            rb'IndicesMapToDataType\s*=\s*"CIFTI_INDEX_TYPE_([A-Z_]+)"', tag
        )
        if dims is None or kind is None:
            continue
        for d in dims.group(1).split(b","):
            if d.strip().isdigit():
                types[int(d)] = kind.group(1).decode()
    return types


def _kind(h: _Header, xml: bytes) -> str:
    """The CIFTI type from the XML's axes (the intent code is often 3000, unknown)."""
    types = _axis_types(xml)
    pair = (types.get(0, "?"), types.get(1, "?"))
    kind = _AXIS_KINDS.get(pair)
    if kind is None:
        code = int(h["intent_code"])
        if code in CIFTI_INTENTS and code != 3000:
            return CIFTI_INTENTS[code]
        raise ClusterH5Error(h.path, f"unsupported CIFTI-2 axes {pair} (intent {code})")
    return kind


def _dims(h: _Header) -> tuple[int, int]:
    dim = [int(d) for d in h["dim"]]
    if dim[0] != 6 or any(d != 1 for d in dim[1:5]):
        raise ClusterH5Error(
            h.path, f"unexpected CIFTI-2 NIfTI dims {dim[: max(0, dim[0]) + 1]}"
        )
    size = os.path.getsize(h.path)
    if min(dim[5], dim[6]) < 1 or dim[5] * dim[6] > size:
        # every value takes at least a byte: such dims are a damaged header
        raise CorruptFileError(
            h.path,
            f"NIfTI dims give {dim[5]} x {dim[6]} values, impossible in a file "
            f"of {size} bytes: a damaged header",
        )
    return dim[5], dim[6]


def _check_maps(path: str, kind: str, n_maps: int, map_index: int | None) -> int:
    if kind not in DENSE_MAP_KINDS:
        raise ClusterH5Error(
            path,
            f"is a CIFTI-2 {kind} file; supported are dscalar, pscalar and pconn "
            "files (and dtseries/dlabel with a map index)",
        )
    if map_index is None and kind != "dscalar":
        raise ClusterH5Error(
            path,
            f"is a CIFTI-2 {kind} file, not a dscalar; pass a map index "
            "(--cifti-map / map_index=) to take one of its maps",
        )
    return _pick_map(path, n_maps, map_index)


def _pick_map(path: str, n_maps: int, map_index: int | None) -> int:
    """The map to read: the only one, or ``map_index`` (negative from the end)."""
    if map_index is None:
        if n_maps != 1:
            raise ClusterH5Error(
                path,
                f"has {n_maps} maps; ModelArray needs one map per file. Pass a map "
                "index (--cifti-map / map_index=) to pick one",
            )
        return 0
    if not -n_maps <= map_index < n_maps:
        raise ClusterH5Error(path, f"map index {map_index} out of range: {n_maps} maps")
    return map_index % n_maps


def _block(
    h: _Header, n_maps: int, n_el: int, map_index: int, *, pconn: bool = False
) -> DataBlock:
    code = int(h["datatype"])
    slope = float(h["scl_slope"])
    inter = float(h["scl_inter"])
    unscaled = (np.isnan(slope) or slope in (0.0, 1.0)) and (
        np.isnan(inter) or inter == 0.0
    )
    use_nib = code not in _FAST_DTYPES or not unscaled
    dtype = np.dtype(h.endian + _FAST_DTYPES.get(code, "f4"))
    offset = int(h["vox_offset"])
    if not use_nib:
        need = offset + n_maps * n_el * dtype.itemsize
        size = os.path.getsize(h.path)
        if size < need:
            raise ClusterH5Error(
                h.path, f"truncated: {size} bytes, the data block needs {need}"
            )
    return DataBlock(
        h.path, offset, dtype, n_maps, n_el, map_index, use_nib, pconn=pconn
    )


def read_reference(
    path: str | os.PathLike[str], *, map_index: int | None = None
) -> tuple[BrainModel | ParcelModel, DataBlock]:
    """The first file of a cohort: its brain model (or parcels) and data block.

    Dense files: the brain-model XML is parsed without nibabel (the same numbers
    nibabel reads, about 10x faster; nibabel is the fallback). Parcellated files
    (pscalar, pconn, as ModelArrayIO accepts them) are parsed with nibabel.

    Parameters
    ----------
    path : a dscalar or pscalar file with one map, a pconn file; dtseries,
        dlabel or multi-map files only with ``map_index``.
    map_index : which map (row) to take from a multi-map file; None requires a
        single-map file.

    Raises
    ------
    ClusterH5Error
        The file is not CIFTI-2, of another type, has several maps and no
        ``map_index``.
    """
    path = os.fspath(path)
    h = _read_header(path)
    xml = _cifti_xml(h)
    kind = _kind(h, xml)
    n_maps, n_el = _dims(h)
    if kind in PARCEL_KINDS:
        idx = _check_parcel_maps(path, kind, n_maps, map_index)
        pxml = _parcels_xml(xml, kind)
        if pxml is None:
            raise ClusterH5Error(path, "CIFTI XML has no parcels map")
        model = _parcel_model_of(path, kind, pxml)
        return model, _block(h, n_maps, n_el, idx, pconn=kind == "pconn")
    idx = _check_maps(path, kind, n_maps, map_index)
    bm_xml = _brain_model_xml(xml)
    if bm_xml is None:
        raise ClusterH5Error(path, "CIFTI XML has no brain-model map")
    return _brain_model_of(path, bm_xml, n_el), _block(h, n_maps, n_el, idx)


def _check_parcel_maps(path: str, kind: str, n_maps: int, map_index: int | None) -> int:
    if kind == "pconn":
        if map_index is not None:
            raise ClusterH5Error(path, "a pconn file has no maps to pick from")
        return 0
    return _pick_map(path, n_maps, map_index)


def _check_parcel_file(
    path: str, h: _Header, xml: bytes, kind: str, ref: ParcelModel,
    map_index: int | None,
) -> DataBlock:  # fmt: skip
    n_maps, n_el = _dims(h)
    if kind != ref.kind:
        raise ClusterH5Error(
            path,
            f"is a CIFTI-2 {kind} file; the first file ({ref.path}) is a {ref.kind}",
        )
    idx = _check_parcel_maps(path, kind, n_maps, map_index)
    total = n_maps * n_el if kind == "pconn" else n_el
    if total != ref.n_elements:
        raise ClusterH5Error(
            path,
            f"has {total} values per map; the first file ({ref.path}) has "
            f"{ref.n_elements}",
        )
    pxml = _parcels_xml(xml, kind)
    if pxml != ref.xml:
        other = _parcel_model_of(path, kind, pxml or b"")
        first = 0 if kind == "pconn" else 1
        for i in range(first, 2):
            if other.axes[i] != ref.axes[i]:
                names_same = np.array_equal(other.axes[i].name, ref.axes[i].name)
                what = (
                    "same parcel names but other vertices or voxels"
                    if names_same
                    else "other parcel names"
                )
                raise ClusterH5Error(
                    path, f"parcels differ from {ref.path} (axis {i}): {what}"
                )
    return _block(h, n_maps, n_el, idx, pconn=kind == "pconn")


def _describe_mismatch(ref: BrainModel, other: BrainModel) -> str:
    if not np.array_equal(other.structure, ref.structure):
        k = int(np.flatnonzero(other.structure != ref.structure)[0])
        return (
            f"greyordinate {k} is in {other.structure[k]}, the first file has "
            f"{ref.structure[k]}"
        )
    if not np.array_equal(other.vertex, ref.vertex):
        k = int(np.flatnonzero(other.vertex != ref.vertex)[0])
        return (
            f"same greyordinate count but another brain model: greyordinate {k} "
            f"is vertex {other.vertex[k]}, the first file has {ref.vertex[k]} "
            "(another mesh or medial-wall mask?)"
        )
    if not np.array_equal(other.voxel, ref.voxel):
        k = int(np.flatnonzero((other.voxel != ref.voxel).any(axis=1))[0])
        return (
            f"same greyordinate count but another brain model: greyordinate {k} "
            f"is voxel {other.voxel[k].tolist()}, the first file has "
            f"{ref.voxel[k].tolist()}"
        )
    return "its brain model differs from the first file's (affine, volume or mesh size)"


def check_file(
    path: str | os.PathLike[str],
    ref: BrainModel | ParcelModel,
    *,
    map_index: int | None = None,
) -> DataBlock:
    """Check one cohort file against the reference brain model; where its data is.

    Only the NIfTI-2 header and the extension bytes are read. The brain-model
    XML is compared byte for byte; if it differs the file is parsed with nibabel
    and the axes compared strictly (names, vertices, voxels, affine, volume).

    Raises
    ------
    ClusterH5Error
        Naming the file: not CIFTI-2, wrong type or map count, or another brain
        model (also when only vertex or voxel indices differ).
    FileNotFoundError
        The file does not exist.
    """
    path = os.fspath(path)
    h = _read_header(path)
    xml = _cifti_xml(h)
    kind = _kind(h, xml)
    if isinstance(ref, ParcelModel):
        return _check_parcel_file(path, h, xml, kind, ref, map_index)
    n_maps, n_el = _dims(h)
    idx = _check_maps(path, kind, n_maps, map_index)
    if n_el != ref.n_elements:
        raise ClusterH5Error(
            path,
            f"has {n_el} greyordinates; the first file ({ref.path}) has "
            f"{ref.n_elements}",
        )
    bm_xml = _brain_model_xml(xml)
    if bm_xml is None:
        raise ClusterH5Error(path, "CIFTI XML has no brain-model map")
    if bm_xml != ref.xml:
        # other bytes (another writer's number formatting?): compare the numbers
        other = _brain_model_of(path, bm_xml, n_el)
        if not ref.same_as(other):
            raise ClusterH5Error(
                path,
                f"brain model differs from {ref.path}: "
                f"{_describe_mismatch(ref, other)}",
            )
    return _block(h, n_maps, n_el, idx)


def read_columns(
    block: DataBlock, start: int, stop: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Read greyordinates ``start:stop`` of one file's selected map.

    The conversion to ``out.dtype`` (float32 by default) is NumPy's cast of the
    stored values, which equals nibabel's ``get_fdata()`` followed by a float32
    cast for unscaled data; scaled or unusual files are read through nibabel.
    ``os.pread`` releases the GIL, so threads read files in parallel.
    """
    if out is None:
        out = np.empty(stop - start, dtype=np.float32)
    n = stop - start
    if n <= 0:
        return out
    if block.pconn:
        # stored column-major: element (r, c) at r + c * rows; ModelArrayIO
        # flattens row-major, so read the whole (small) matrix and reorder
        out[:] = _read_matrix(block).ravel()[start:stop]
        return out
    if block.use_nibabel:
        out[:] = _read_matrix(block)[block.map_index, start:stop]
        return out
    item = block.dtype.itemsize
    m = block.n_maps
    first = block.offset + (start * m) * item
    nbytes = n * m * item
    with named_errors(block.path, "reading the data block"):
        fd = os.open(block.path, os.O_RDONLY)
        try:
            buf = os.pread(fd, nbytes, first)
        finally:
            os.close(fd)
    if len(buf) != nbytes:
        raise ClusterH5Error(block.path, "truncated: the data block ended early")
    raw = np.frombuffer(buf, dtype=block.dtype)
    if m > 1:
        raw = raw[block.map_index :: m]
    out[:] = raw
    return out


def _read_matrix(block: DataBlock) -> np.ndarray:
    """The whole (n_maps, n_elements) matrix of a file, as nibabel returns it."""
    if block.use_nibabel:
        with named_errors(
            block.path, "reading data with nibabel", catch=NIBABEL_ERRORS
        ):
            img = nib.load(block.path)
            data = np.asarray(img.get_fdata(caching="unchanged"))
        return data.reshape(block.n_maps, block.n_elements)
    count = block.n_maps * block.n_elements
    raw = np.fromfile(block.path, dtype=block.dtype, count=count, offset=block.offset)
    if raw.size != count:
        raise ClusterH5Error(block.path, "truncated: the data block ended early")
    return raw.reshape(block.n_elements, block.n_maps).T


def read_map(
    path: str | os.PathLike[str], *, map_index: int | None = None
) -> np.ndarray:
    """One map of a dense CIFTI-2 file as float32 (nibabel parse; for single files)."""
    ref, block = read_reference(path, map_index=map_index)
    return read_columns(block, 0, ref.n_elements)


# --------------------------------------------------------------------------
# writing: dscalar exports from a template
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """An export template: header bytes for the fast path, or a nibabel image."""

    path: str
    n_elements: int
    kind: str
    header_bytes: bytes | None
    dtype: np.dtype | None
    image: Any = None
    #: (rows, columns) of each written matrix: (1, n) except for pconn
    shape: tuple[int, int] = (1, 0)


def load_template(path: str | os.PathLike[str]) -> Template:
    """Prepare a CIFTI-2 file as the template of exports (as ModelArrayIO uses it).

    Single-map dscalar and pscalar files and pconn files are accepted, as in
    ModelArrayIO. The fast path (header bytes + data) is used for templates stored
    as unscaled float32/float64; anything else is written by nibabel.
    """
    path = os.fspath(path)
    h = _read_header(path)
    kind = _kind(h, _cifti_xml(h))
    n_maps, n_el = _dims(h)
    if kind not in ("dscalar", "pscalar", "pconn") or (kind != "pconn" and n_maps != 1):
        raise ClusterH5Error(
            path,
            "template must be a single-map dscalar or pscalar file or a pconn "
            f"file; this is a {kind} with {n_maps} maps",
        )
    shape = (n_maps, n_el) if kind == "pconn" else (1, n_el)
    block = _block(h, n_maps, n_el, 0)
    fast = not block.use_nibabel and block.dtype.kind == "f"
    if fast:
        return Template(path, n_maps * n_el, kind, h.raw, block.dtype, shape=shape)
    try:
        img = nib.load(path)
    except Exception as err:
        raise ClusterH5Error(path, f"nibabel cannot read it: {err}") from err
    return Template(path, n_maps * n_el, kind, None, None, img, shape=shape)


def safe_output_name(name: str, what: str = "name") -> str:
    """ModelArrayIO's file-name sanitising (spaces and ``/`` to ``_``), made safe.

    Backslashes, NUL and other control characters also become ``_`` and empty
    names are refused. The result is only ever used as part of a file name
    (``<analysis>_<stat>``, ``<scalar>_<output>``), never as a path component of
    its own, so a name read from a file cannot leave the output folder.
    """
    text = str(name).replace(" ", "_").replace("/", "_").replace("\\", "_")
    text = "".join("_" if ord(c) < 32 else c for c in text)
    if not text:
        raise ValueError(f"{what} {name!r} cannot be used in a file name")
    return text


def export_file_names(
    analysis: str, stats: Sequence[str]
) -> list[tuple[int, str, bool]]:
    """``(row, file stem, is_1m)`` of every file an export writes, in order.

    ModelArrayIO writes ``<analysis>_<stat>`` for each row and, when the
    sanitised stat contains ``p.value``, ``<analysis>_<stat with p.value ->
    1m.p.value>`` holding ``1 - value``.
    """
    a = safe_output_name(analysis, "analysis name")
    out: list[tuple[int, str, bool]] = []
    for i, stat in enumerate(stats):
        s = safe_output_name(stat, "statistic name")
        out.append((i, f"{a}_{s}", False))
        if "p.value" in s:
            out.append((i, f"{a}_{s.replace('p.value', '1m.p.value')}", True))
    return out


def _inside(folder: Path, file: Path) -> Path:
    # belt and braces after sanitising: the file must sit directly in the folder
    if file.parent.resolve() != folder.resolve() or file.name in ("", ".", ".."):
        raise ValueError(f"{file}: refusing to write outside {folder}")
    return file


def write_dscalar_row(
    path: str | os.PathLike[str],
    row: np.ndarray,
    template: Template,
    *,
    overwrite: bool,
) -> Path:
    """Write one map with the template's header, atomically."""
    row = np.asarray(row)
    if row.ndim != 1 or row.shape[0] != template.n_elements:
        raise ClusterH5Error(
            template.path,
            f"template has {template.n_elements} greyordinates but the data has "
            f"shape {row.shape}",
        )
    matrix = row.reshape(template.shape)  # pconn rows were flattened row-major
    target = Path(path)
    with atomic_output(target, overwrite=overwrite, suffix=".nii") as tmp:
        if template.header_bytes is not None:
            assert template.dtype is not None
            with open(tmp, "wb") as fh:
                fh.write(template.header_bytes)
                # NIfTI stores the first CIFTI dimension fastest (column-major)
                fh.write(matrix.T.astype(template.dtype).tobytes())
        else:
            img = template.image
            out = nib.Cifti2Image(
                matrix, header=img.header, nifti_header=img.nifti_header
            )
            out.to_filename(tmp)
    return target


def write_dscalar_rows(
    output_dir: str | os.PathLike[str],
    analysis: str,
    stats: Sequence[str],
    matrix: np.ndarray,
    template: Template,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Write ModelArrayIO's export files for one analysis.

    Parameters
    ----------
    output_dir : folder (created with parents).
    analysis : analysis name; file names are ``<analysis>_<stat>.dscalar.nii``.
    stats : statistic names, one per row of ``matrix``.
    matrix : (n_stats, n_elements) results.
    template : from :func:`load_template`.
    overwrite : replace existing files; otherwise refuse before writing anything.

    Returns
    -------
    The paths written, in ModelArrayIO's order.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != len(stats):
        raise ValueError(
            f"{len(stats)} statistic names for a results matrix of shape {matrix.shape}"
        )
    folder = Path(output_dir)
    plan = [
        (row, _inside(folder, folder / f"{stem}.{template.kind}.nii"), one_minus)
        for row, stem, one_minus in export_file_names(analysis, stats)
    ]
    seen: set[Path] = set()
    for _, target, _ in plan:
        if target in seen:
            raise ValueError(f"{target}: two statistics map to the same file name")
        seen.add(target)
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"{target}: exists; pass overwrite=True to replace it"
            )
    folder.mkdir(parents=True, exist_ok=True)
    items: Iterable[tuple[int, Path, bool]] = plan
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(plan, desc=f"export {analysis}", unit="file")
    written = []
    for row, target, one_minus in items:
        data = matrix[row]
        if one_minus:
            data = 1 - data
        written.append(write_dscalar_row(target, data, template, overwrite=overwrite))
    return written


# --------------------------------------------------------------------------
# writing: clustered experiments as dtseries / ptseries
# --------------------------------------------------------------------------


def _check_ijk(ijk: Any, volume_shape: Sequence[int], what: str) -> np.ndarray:
    arr = np.asarray(ijk)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(
            f"{what}: voxel indices must have shape (n, 3), got {arr.shape}"
        )
    arr = arr.astype(np.int64)
    shape = np.asarray(volume_shape, dtype=np.int64)
    if arr.size and ((arr < 0).any() or (arr >= shape).any()):
        raise ValueError(f"{what}: voxel indices outside the volume {tuple(shape)}")
    return arr


def _series(n_time: int, tr: float) -> cifti2_axes.SeriesAxis:
    if not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"TR must be a positive number of seconds, got {tr}")
    return cifti2_axes.SeriesAxis(
        start=0.0, step=float(tr), size=int(n_time), unit="SECOND"
    )


def _save_cifti(
    path: str | os.PathLike[str],
    data: np.ndarray,
    axes: tuple[Any, Any],
    overwrite: bool,
) -> Path:
    img = nib.Cifti2Image(np.ascontiguousarray(data, dtype=np.float32), header=axes)
    target = Path(path)
    with atomic_output(target, overwrite=overwrite, suffix=".nii") as tmp:
        img.to_filename(tmp)
    return target


def write_dtseries(
    path: str | os.PathLike[str],
    data: np.ndarray,
    ijk: np.ndarray,
    affine: np.ndarray,
    volume_shape: Sequence[int],
    tr: float,
    *,
    structure: str = "CIFTI_STRUCTURE_OTHER",
    overwrite: bool = False,
) -> Path:
    """Write voxel time series as a CIFTI-2 dense time series (``.dtseries.nii``).

    Parameters
    ----------
    data : (n_voxels, n_time) values; stored as float32.
    ijk : (n_voxels, 3) 0-based voxel indices (i, j, k), in the order of ``data``'s
        rows. The brain-model axis keeps this order (it is built from explicit
        voxels, not from a mask, whose C order would reorder them), so element
        ``n`` of the file is row ``n`` of ``data``.
    affine : (4, 4) voxel-to-world matrix of the volume.
    volume_shape : (i, j, k) shape of the volume.
    tr : repetition time in seconds (the series axis step; start 0).
    structure : CIFTI brain structure of the single volume model.
    overwrite : replace an existing file.
    """
    data = np.asarray(data)
    ijk = _check_ijk(ijk, volume_shape, os.fspath(path))
    if data.ndim != 2 or data.shape[0] != ijk.shape[0]:
        raise ValueError(
            f"{os.fspath(path)}: data shape {data.shape} does not match "
            f"{ijk.shape[0]} voxels (expected (n_voxels, n_time))"
        )
    if ijk.shape[0] == 0:
        raise ValueError(f"{os.fspath(path)}: no voxels to write")
    if len({tuple(v) for v in ijk.tolist()}) != ijk.shape[0]:
        raise ValueError(f"{os.fspath(path)}: repeated voxel indices")
    bm = cifti2_axes.BrainModelAxis(
        structure,
        voxel=ijk,
        affine=np.asarray(affine, dtype=float),
        volume_shape=tuple(int(s) for s in volume_shape),
    )
    return _save_cifti(path, data.T, (_series(data.shape[1], tr), bm), overwrite)


def write_ptseries(
    path: str | os.PathLike[str],
    summary: np.ndarray,
    parcel_names: Sequence[str],
    parcel_ijk: Sequence[np.ndarray],
    affine: np.ndarray,
    volume_shape: Sequence[int],
    tr: float,
    *,
    overwrite: bool = False,
) -> Path:
    """Write cluster summaries as a CIFTI-2 parcellated time series (``.ptseries.nii``).

    Parameters
    ----------
    summary : (n_clusters, n_time) values; stored as float32.
    parcel_names : one unique name per cluster (row of ``summary``).
    parcel_ijk : per cluster, an (n_c, 3) array of 0-based voxel indices.
    affine, volume_shape : the volume of the voxels.
    tr : repetition time in seconds.
    overwrite : replace an existing file.
    """
    summary = np.asarray(summary)
    names = [str(n) for n in parcel_names]
    if (
        summary.ndim != 2
        or summary.shape[0] != len(names)
        or len(names) != len(parcel_ijk)
    ):
        raise ValueError(
            f"{os.fspath(path)}: summary shape {summary.shape}, {len(names)} names and "
            f"{len(parcel_ijk)} voxel lists must agree (expected (n_clusters, n_time))"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{os.fspath(path)}: parcel names must be unique")
    voxels = [_check_ijk(v, volume_shape, os.fspath(path)) for v in parcel_ijk]
    parcels = cifti2_axes.ParcelsAxis(
        names,
        voxels,
        [{} for _ in names],
        affine=np.asarray(affine, dtype=float),
        volume_shape=tuple(int(s) for s in volume_shape),
    )
    return _save_cifti(
        path, summary.T, (_series(summary.shape[1], tr), parcels), overwrite
    )
