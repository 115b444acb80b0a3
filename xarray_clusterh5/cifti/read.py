"""Reading CIFTI-2 files: ModelArray cohorts (headers checked, data read by offset).

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

Writers are in :mod:`xarray_clusterh5.cifti.write`. No xarray here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from nibabel.cifti2 import cifti2_axes

from xarray_clusterh5._hdf5.files import (
    READ_ERRORS,
    ClusterH5Error,
    CorruptFileError,
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
def nibabel_errors() -> tuple[type[BaseException], ...]:
    """What nibabel raises on damaged NIfTI/CIFTI files, besides OSError and friends.

    A function so that importing this module does not import nibabel (a MIF or
    NIfTI job does not need its CIFTI parts).
    """
    import nibabel as nib

    return (
        *READ_ERRORS,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    )


def __getattr__(name: str) -> Any:
    # NIBABEL_ERRORS, computed on first use so that nibabel loads only when needed
    if name == "NIBABEL_ERRORS":
        return nibabel_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


@dataclass(frozen=True)
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
        from nibabel.cifti2 import cifti2_axes

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
        """From a nibabel axis (the slow path, for XML the fast parser refuses).

        The volume matrix is kept as nibabel holds it: as stored, in units of
        10^MeterExponent m (the caller scales it to millimetres).
        """
        shape = axis.volume_shape
        return cls(
            np.asarray(axis.name, dtype=str),
            np.asarray(axis.vertex, dtype=np.int64),
            np.asarray(axis.voxel, dtype=np.int64),  # (n, 3) in nibabel
            {str(k): int(v) for k, v in axis.nvertices.items()},
            None if axis.affine is None else np.array(axis.affine, dtype=float),
            None if shape is None else _shape3(shape),
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


def _nib_load(path: str) -> Any:
    # nibabel's stubs type load() as FileBasedImage, without the CIFTI methods
    import nibabel as nib

    return nib.load(path)


def _in_mm(affine: np.ndarray, meter_exponent: int) -> np.ndarray:
    """A CIFTI-2 volume matrix (units of 10^MeterExponent m) in millimetres."""
    out = np.array(affine, dtype=float)
    out[:3] *= 10.0 ** (meter_exponent + 3)
    return out


def _shape3(shape: Any) -> tuple[int, int, int]:
    i, j, k = (int(x) for x in shape)
    return i, j, k


def parse_brain_models(bm_xml: bytes, n_elements: int, path: str) -> BrainModel | None:
    """Parse a brain-model ``MatrixIndicesMap`` without nibabel (fast), or None.

    nibabel spends about a second building a 91k-greyordinate axis; this reads
    the same numbers with one regular expression and ``np.array(split())``.
    Anything unexpected (entities, counts that do not add up, a number that is
    not one, a missing attribute) returns None and the caller falls back to
    nibabel, which reads the file or says what is wrong with it.
    """
    if b"&" in bm_xml:
        return None
    try:
        models = _parse_models(bm_xml, n_elements)
        if models is None:
            return None
        structure, vertex, voxel, nvertices, has_voxels = models
        volume = None
        if has_voxels:
            volume = _parse_volume(bm_xml)
            if volume is None:
                return None
    except ValueError:  # a number that is not one
        return None
    affine, volume_shape = (None, None) if volume is None else volume
    return BrainModel(
        structure, vertex, voxel, nvertices, affine, volume_shape, bm_xml, path
    )


def _parse_models(
    bm_xml: bytes, n_elements: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], bool] | None:
    """Structures, vertices, voxels, mesh sizes of the ``<BrainModel>`` list,
    and whether it has voxels."""
    structure = np.empty(n_elements, dtype=object)
    vertex = np.full(n_elements, -1, dtype=np.int64)
    voxel = np.full((n_elements, 3), -1, dtype=np.int64)
    nvertices: dict[str, int] = {}
    pos = 0
    has_voxels = False
    for m in _BM_RE.finditer(bm_xml):
        tag, body = m.group(1), m.group(2) or b""
        # (a missing attribute fails int("") like a bad one: ValueError)
        offset = int(_xml_attr(tag, "IndexOffset") or "")
        count = int(_xml_attr(tag, "IndexCount") or "")
        mtype = _xml_attr(tag, "ModelType")
        name = _xml_attr(tag, "BrainStructure")
        # (a negative count fails the index-count checks below)
        if offset != pos or pos + count > n_elements or not name:
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
    return structure.astype(str), vertex, voxel, nvertices, has_voxels


def _parse_volume(bm_xml: bytes) -> tuple[np.ndarray, tuple[int, int, int]] | None:
    """The ``<Volume>``: its matrix in millimetres and its shape."""
    vol = _VOL_RE.search(bm_xml)
    if vol is None:
        return None
    dims = _xml_attr(vol.group(1), "VolumeDimensions")
    tr = _TRANSFORM_RE.search(vol.group(2))
    if dims is None or tr is None:
        return None
    sizes = dims.split(",")
    values = np.array(tr.group(2).split(), dtype=float)
    # (MeterExponent is required: nibabel refuses a matrix without it)
    exponent = int(_xml_attr(tr.group(1), "MeterExponent") or "")
    if values.size != 16 or len(sizes) != 3:
        return None
    return _in_mm(values.reshape(4, 4), exponent), _shape3(sizes)


def _brain_model_of(path: str, bm_xml: bytes, n_el: int) -> BrainModel:
    """Fast parse, else nibabel."""
    model = parse_brain_models(bm_xml, n_el, path)
    if model is not None:
        return model
    try:
        header = _nib_load(path).header
        axis = header.get_axis(1)
        volume = header.matrix.get_index_map(1).volume
    except Exception as err:
        raise ClusterH5Error(
            path, f"nibabel cannot read its CIFTI-2 header: {err}"
        ) from err
    from nibabel.cifti2 import cifti2_axes

    if not isinstance(axis, cifti2_axes.BrainModelAxis):
        raise ClusterH5Error(
            path, f"second axis is {type(axis).__name__}, not brain models"
        )
    # (nibabel refuses a file whose axis lengths differ from its NIfTI dims)
    model = BrainModel.from_axis(axis, bm_xml, path)
    if model.affine is not None:  # voxels, so a volume: nibabel keeps its units
        matrix = volume.transformation_matrix_voxel_indices_ijk_to_xyz
        scaled = _in_mm(model.affine, int(matrix.meter_exponent))
        model = replace(model, affine=scaled)
    return model


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


@dataclass(frozen=True)
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


def _parcel_axes(path: str) -> tuple[Any, Any]:
    """Both nibabel axes of a parcellated file."""
    try:
        img = _nib_load(path)
        return img.header.get_axis(0), img.header.get_axis(1)
    except Exception as err:
        raise ClusterH5Error(
            path, f"nibabel cannot read its CIFTI-2 header: {err}"
        ) from err


@dataclass(frozen=True)
class DataBlock:
    """Where one file's map lives on disk (or that nibabel must read it)."""

    path: str
    offset: int
    dtype: np.dtype
    n_maps: int
    n_elements: int
    map_index: int
    #: scaled data or a type without an exact direct cast: nibabel reads it
    use_nibabel: bool
    #: a pconn matrix (n_maps rows x n_elements columns), read flattened row-major
    pconn: bool


@dataclass(frozen=True)
class _Header:
    path: str
    hdr: np.ndarray = field(repr=False)  # pragma: no mutate - repr (debug) only
    endian: Literal["<", ">"]
    raw: bytes = field(repr=False)  # pragma: no mutate - repr (debug) only

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
            endian: Literal["<", ">"] = "<"
        elif size_be == NIFTI2_HEADER_SIZE:
            endian = ">"
        else:
            raise ClusterH5Error(path, "not a NIfTI-2/CIFTI-2 file (bad header size)")
        if len(head) < NIFTI2_HEADER_SIZE:
            raise ClusterH5Error(path, "truncated NIfTI-2 header")
        from nibabel.nifti2 import header_dtype

        dt = header_dtype.newbyteorder(endian)
        hdr = np.frombuffer(head, dtype=dt, count=1)[0]
        if bytes(hdr["magic"]) != b"n+2":  # (numpy ends the field at its NUL)
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
    order: Literal["little", "big"] = "little" if h.endian == "<" else "big"
    while True:
        # read unsigned: a negative size or code reads huge. With fewer than 8
        # bytes left, the size is short or runs past the end: refused below
        esize = int.from_bytes(raw[pos : pos + 4], order)
        ecode = int.from_bytes(raw[pos + 4 : pos + 8], order)
        if esize < 8 or pos + esize > len(raw):
            raise ClusterH5Error(
                h.path, "has no CIFTI-2 extension (code 32) in its header"
            )
        if ecode == CIFTI_ECODE:
            return raw[pos + 8 : pos + esize].rstrip(b"\x00")
        pos += esize


_MAP_TAG_RE = re.compile(rb"<MatrixIndicesMap\b[^>]*>")
_MAP_END = b"</MatrixIndicesMap>"
#: from the first map's start to the last map's end (greedy: fast on large XML)
_ALL_MAPS_RE = re.compile(rb"<MatrixIndicesMap\b.*" + _MAP_END, re.S)


def _map_xml(xml: bytes, index_type: bytes) -> bytes | None:
    """The first ``<MatrixIndicesMap ...{index_type}...>...</MatrixIndicesMap>``.

    Tags are found by a regular expression, the end by ``bytes.index`` (a
    regular expression over a whole 90k-greyordinate map is 40 times slower).
    """
    for tag in _MAP_TAG_RE.finditer(xml):
        # (an empty element, e.g. a series axis, has no body to compare)
        if index_type in tag.group() and not tag.group().endswith(b"/>"):
            try:
                end = xml.index(_MAP_END, tag.end())
            except ValueError:  # never closed: damaged XML
                return None
            return xml[tag.start() : end + len(_MAP_END)]
    return None


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
    maps = _ALL_MAPS_RE.search(xml)
    return None if maps is None else maps.group()


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


def _storage(h: _Header) -> tuple[np.dtype, bool]:
    """The stored data type, and whether nibabel must read the data (scaled data,
    or a type without an exact direct cast)."""
    code = int(h["datatype"])
    slope = float(h["scl_slope"])
    inter = float(h["scl_inter"])
    unscaled = (np.isnan(slope) or slope in (0.0, 1.0)) and (
        np.isnan(inter) or inter == 0.0
    )
    use_nib = code not in _FAST_DTYPES or not unscaled
    return np.dtype(h.endian + _FAST_DTYPES.get(code, "f4")), use_nib


def _block(
    h: _Header, n_maps: int, n_el: int, map_index: int, *, pconn: bool = False
) -> DataBlock:
    dtype, use_nib = _storage(h)
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
        model = ParcelModel(kind, _parcel_axes(path), pxml, path)
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
        return 0  # pragma: no mutate - a pconn block reads its whole matrix
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
        axes = _parcel_axes(path)
        first = 0 if kind == "pconn" else 1
        for i in range(first, 2):
            if axes[i] != ref.axes[i]:
                names_same = np.array_equal(axes[i].name, ref.axes[i].name)
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
    block: DataBlock,
    start: int,
    stop: int,
    out: np.ndarray | None = None,
    fd: int | None = None,
) -> np.ndarray:
    """Read greyordinates ``start:stop`` of one file's selected map.

    The conversion to ``out.dtype`` (float32 by default) is NumPy's cast of the
    stored values, which equals nibabel's ``get_fdata()`` followed by a float32
    cast for unscaled data; scaled or unusual files are read through nibabel.
    ``os.pread`` releases the GIL, so threads read files in parallel. ``fd``:
    the file already open (see :class:`OpenFiles`), else it is opened here.
    """
    n = stop - start
    if out is None:
        out = np.empty(n, dtype=np.float32)
    if block.pconn:
        # stored column-major: element (r, c) at r + c * rows; ModelArrayIO
        # flattens row-major, so read the whole (small) matrix and reorder
        out[:] = _read_matrix(block).ravel()[start:stop]
        return out
    if block.use_nibabel:
        out[:] = _read_matrix(block)[block.map_index, start:stop]
        return out
    m = block.n_maps
    first = block.offset + start * m * block.dtype.itemsize
    if _is_direct(block, out):
        # the stored bytes are the values: read them straight into ``out``
        got = _pread(block.path, fd, [out], first)
    else:
        buf = bytearray(n * m * block.dtype.itemsize)
        got = _pread(block.path, fd, [buf], first)
        out[:] = np.frombuffer(buf, dtype=block.dtype)[block.map_index :: m]
    if got != n * m * block.dtype.itemsize:
        raise ClusterH5Error(block.path, "truncated: the data block ended early")
    return out


def read_stripe_rows(
    blocks: Sequence[DataBlock],
    fds: Sequence[int | None],
    start: int,
    stop: int,
    out: np.ndarray,
    rows: range,
) -> None:
    """Greyordinates ``start:stop`` of the files ``rows`` into those rows of ``out``.

    A file held open whose bytes are the values is one ``os.preadv`` into its
    row (a 10,000-subject cohort makes ~4 million such reads, so the loop is
    kept lean); any other file goes through :func:`read_columns`.
    """
    want = (stop - start) * out.itemsize
    for i in rows:
        b, fd, row = blocks[i], fds[i], out[i]
        if fd is None or not _is_direct(b, row):
            read_columns(b, start, stop, row, fd)
            continue
        if _pread(b.path, fd, [row], b.offset + start * out.itemsize) != want:
            raise ClusterH5Error(b.path, "truncated: the data block ended early")


def _is_direct(block: DataBlock, out: np.ndarray) -> bool:
    """Whether the stored bytes of ``block`` are ``out``'s values as they are."""
    return block.n_maps == 1 and out.dtype == block.dtype and out.flags.c_contiguous


def _pread(path: str, fd: int | None, buffers: list[Any], offset: int) -> int:
    if fd is None:
        with named_errors(path, "reading the data block"):
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.preadv(fd, buffers, offset)
            finally:
                os.close(fd)
    try:  # no context manager: a 10,000-subject cohort makes ~4 million calls
        return os.preadv(fd, buffers, offset)
    except OSError as err:
        raise CorruptFileError(path, f"reading the data block: {err}") from err


class OpenFiles:
    """A cohort's files held open for many column reads; closed on exit.

    Streaming a cohort into a ModelArray file reads every file once per
    element stripe, so a 10,000-subject cohort makes millions of small reads:
    opening the file for each costs more than the read. Up to ``limit`` files
    are kept open (default: half the process's open-file limit), the rest are
    opened per read.
    """

    def __init__(self, blocks: Sequence[DataBlock], limit: int | None = None) -> None:
        keep = _open_file_budget() if limit is None else limit
        self.fds: list[int | None] = [None] * len(blocks)
        try:
            for i, b in enumerate(blocks[: max(keep, 0)]):
                if not (b.pconn or b.use_nibabel):
                    with named_errors(b.path, "opening the data file"):
                        self.fds[i] = os.open(b.path, os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fds, self.fds = self.fds, [None] * len(self.fds)
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> OpenFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_file_budget() -> int:
    try:
        import resource
    except ImportError:  # Windows: no such limit to ask for
        return 256
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:  # no limit: a million files is plenty
        return 1 << 20  # pragma: no mutate
    return soft // 2


def _read_matrix(block: DataBlock) -> np.ndarray:
    """The whole (n_maps, n_elements) matrix of a file, as nibabel returns it."""
    if block.use_nibabel:
        with named_errors(
            block.path, "reading data with nibabel", catch=nibabel_errors()
        ):
            img = _nib_load(block.path)
            data = np.asarray(img.get_fdata(caching="unchanged"))
        return data.reshape(block.n_maps, block.n_elements)
    count = block.n_maps * block.n_elements
    raw = np.fromfile(block.path, dtype=block.dtype, count=count, offset=block.offset)
    if raw.size != count:
        raise ClusterH5Error(block.path, "truncated: the data block ended early")
    return raw.reshape(block.n_elements, block.n_maps).T
