"""The ``.mif`` text header: parse, check and format it (MRtrix 3 rules).

A ``.mif`` file starts with ``mrtrix image``, then ``key: value`` lines up to
``END``; the data follow in the same file at the offset given by
``file: . OFFSET``. ``layout`` gives, per axis, the stride order (0 = fastest
on disk) and a sign (``-`` = stored reversed). ``.mif.gz`` is the whole file
gzipped (the offset counts uncompressed bytes). No h5py or xarray here.
"""

from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from xarray_clusterh5.errors import ClusterH5Error

MAGIC = b"mrtrix image\n"
#: MRtrix datatype names (without byte order) -> numpy kind and size
_BASE_TYPES = {
    "Int8": "i1",
    "UInt8": "u1",
    "Int16": "i2",
    "UInt16": "u2",
    "Int32": "i4",
    "UInt32": "u4",
    "Int64": "i8",
    "UInt64": "u8",
    "Float32": "f4",
    "Float64": "f8",
    "CFloat32": "c8",
    "CFloat64": "c16",
}
_NAMES = {v: k for k, v in _BASE_TYPES.items()}
#: keys the reader interprets; every other line is kept verbatim, in order
_STRUCTURAL = ("dim", "vox", "layout", "datatype", "transform", "scaling", "file")
_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class MifHeader:
    """What a ``.mif`` header says.

    ``layout`` holds one signed stride per axis as MRtrix writes it: the
    magnitude is the axis's rank from fastest (0) to slowest, the sign its
    direction; the sign of axis rank 0 is kept in ``reversed_axes``.
    """

    path: str
    dim: tuple[int, ...]
    vox: tuple[float, ...]
    order: tuple[int, ...]  # stride rank of each axis, 0 = fastest on disk
    reversed_axes: tuple[bool, ...]
    dtype: np.dtype
    transform: np.ndarray  # (3, 4) direction cosines + origin
    scaling: tuple[float, float] | None  # (offset, multiplier)
    keyvals: list[tuple[str, str]] = field(default_factory=list)
    data_offset: int = 0  # where the data start (0 for a header built by hand)

    @property
    def n_values(self) -> int:
        return int(np.prod(self.dim, dtype=np.int64))

    def affine(self) -> np.ndarray:
        """4x4 voxel (MRtrix logical index) to scanner affine."""
        out = np.eye(4)
        zooms = np.ones(3)
        n = min(3, len(self.vox))
        zooms[:n] = self.vox[:n]
        out[:3, :3] = self.transform[:, :3] * zooms
        out[:3, 3] = self.transform[:, 3]
        return out


def parse_dtype(path: str, text: str) -> np.dtype:
    """``Float32LE`` etc. to a numpy dtype; ``Bit`` and unknown types refused."""
    name = text.strip()
    endian = "<" if sys.byteorder == "little" else ">"
    if name.endswith(("LE", "BE")):
        endian = "<" if name.endswith("LE") else ">"
        name = name[:-2]
    if name == "Bit":
        raise ClusterH5Error(path, "MIF datatype Bit (packed bits) is not supported")
    if name not in _BASE_TYPES:
        raise ClusterH5Error(path, f"unknown MIF datatype {text.strip()!r}")
    return np.dtype(endian + _BASE_TYPES[name])  # (numpy drops it for 1 byte)


def dtype_name(dtype: np.dtype) -> str:
    """numpy dtype to MRtrix's name, byte order explicit (``Float32LE``)."""
    dt = np.dtype(dtype)
    code = f"{dt.kind}{dt.itemsize}"
    if code not in _NAMES:
        raise ValueError(f"{dt} cannot be stored in a MIF file")
    if dt.itemsize == 1:
        return _NAMES[code]
    return _NAMES[code] + ("LE" if dt.str[0] == "<" else "BE")  # str: explicit order


def parse_layout(
    path: str, text: str, ndim: int
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """``-0,+1,+2`` to stride ranks ``(0, 1, 2)`` and reversed flags."""
    tokens = [t.strip() for t in text.split(",")]
    if len(tokens) != ndim:
        raise ClusterH5Error(
            path, f"layout {text!r} has {len(tokens)} axes, dim {ndim}"
        )
    try:
        order = tuple(abs(int(t)) for t in tokens)
    except ValueError:
        raise ClusterH5Error(path, f"bad MIF layout {text!r}") from None
    if sorted(order) != list(range(ndim)):
        raise ClusterH5Error(path, f"MIF layout {text!r} is not a permutation of axes")
    return order, tuple(t.startswith("-") for t in tokens)


def format_layout(order: tuple[int, ...], reversed_axes: tuple[bool, ...]) -> str:
    return ",".join(
        f"{'-' if r else '+'}{o}" for o, r in zip(order, reversed_axes, strict=True)
    )


def _floats(path: str, key: str, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise ClusterH5Error(path, f"bad MIF {key}: {value!r}") from None


def _lines(path: str, raw: bytes) -> tuple[list[tuple[str, str]], int]:
    """``(key, value)`` lines of a header and the bytes it takes up to ``END``."""
    if not raw.startswith(MAGIC):
        raise ClusterH5Error(
            path, "not a MIF file (does not start with 'mrtrix image')"
        )
    try:
        end = raw.index(b"\nEND\n")
    except ValueError:
        raise ClusterH5Error(
            path, "MIF header has no END line (truncated file?)"
        ) from None
    out = []
    for line in raw[len(MAGIC) : end].decode("latin-1").split("\n"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ClusterH5Error(path, f"MIF header line without ':': {line!r}")
        out.append((key.strip(), value.strip()))
    return out, end + 5


def _data_offset(path: str, files: list[str], header_end: int) -> int:
    if len(files) != 1:
        raise ClusterH5Error(
            path, f"MIF header has {len(files)} 'file:' entries; one is needed"
        )
    parts = files[0].split()
    if parts[0] != ".":
        raise ClusterH5Error(
            path,
            f"data are in a separate file ({parts[0]!r}); only single-file .mif "
            "and .mif.gz images are supported",
        )
    try:
        offset = int(parts[1]) if len(parts) > 1 else header_end
    except ValueError:
        raise ClusterH5Error(path, f"bad MIF data offset {parts[1]!r}") from None
    if offset < header_end:
        raise ClusterH5Error(path, f"data offset {offset} lies inside the header")
    return offset


def parse_header(path: str, raw: bytes) -> MifHeader:
    """Parse the header at the start of ``raw`` (the file's uncompressed bytes)."""
    lines, header_end = _lines(path, raw)
    single: dict[str, str] = {}
    transform: list[tuple[float, ...]] = []
    files: list[str] = []
    keyvals: list[tuple[str, str]] = []
    for key, value in lines:
        low = key.lower()
        if low == "transform":
            transform.append(_floats(path, key, value))
        elif low == "file":
            files.append(value)
        elif low in _STRUCTURAL:
            single[low] = value
        else:
            keyvals.append((key, value))
    for need in ("dim", "vox", "layout", "datatype"):
        if need not in single:
            raise ClusterH5Error(path, f"MIF header has no '{need}:' line")
    try:
        dim = tuple(int(v) for v in single["dim"].split(","))
    except ValueError:
        raise ClusterH5Error(path, f"bad MIF dim {single['dim']!r}") from None
    if any(d < 1 for d in dim):
        raise ClusterH5Error(path, f"MIF dim {single['dim']!r} has an empty axis")
    vox = _floats(path, "vox", single["vox"])
    order, rev = parse_layout(path, single["layout"], len(dim))
    tf = np.eye(3, 4)
    if transform:
        if len(transform) != 3 or any(len(r) != 4 for r in transform):
            raise ClusterH5Error(path, "MIF transform must be 3 rows of 4 numbers")
        tf = np.array(transform, dtype=np.float64)
    scaling = None
    if "scaling" in single:
        sc = _floats(path, "scaling", single["scaling"])
        if len(sc) != 2:
            raise ClusterH5Error(path, f"bad MIF scaling {single['scaling']!r}")
        scaling = (sc[0], sc[1])
    return MifHeader(
        path, dim, vox, order, rev, parse_dtype(path, single["datatype"]), tf,
        scaling, keyvals, _data_offset(path, files, header_end),
    )  # fmt: skip


def is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_header(path: str | os.PathLike[str]) -> MifHeader:
    """The header of a ``.mif`` or ``.mif.gz`` file (data not read)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: no such file")
    opener = gzip.open if is_gzip(p) else open
    chunk = 4096
    try:
        with opener(p, "rb") as fh:
            raw = b""
            while b"\nEND\n" not in raw and len(raw) < _MAX_HEADER:
                more = fh.read(chunk)
                if not more:
                    break
                raw += more
    except (OSError, EOFError) as err:
        raise ClusterH5Error(p, f"cannot read MIF header: {err}") from err
    return parse_header(p, raw)


def format_header(h: MifHeader, dtype: np.dtype) -> bytes:
    """Header bytes for ``h``'s geometry, ``dtype`` data and a ``file:`` line.

    Lines in ModelArrayIO's order (dim, vox, layout, datatype, transform, the
    other keys verbatim, file); the offset is the first multiple of 4 after the
    header, as MRtrix writes it. No ``scaling`` line: data are stored as given.
    """
    lines = [
        "mrtrix image",
        "dim: " + ",".join(str(d) for d in h.dim),
        "vox: " + ",".join(str(float(v)) for v in h.vox),
        "layout: " + format_layout(h.order, h.reversed_axes),
        "datatype: " + dtype_name(dtype),
    ]
    lines += [
        "transform: " + ", ".join(repr(float(v)) for v in row) for row in h.transform
    ]
    lines += [f"{k}: {v}" for k, v in h.keyvals]

    head = ("\n".join(lines) + "\n").encode("latin-1")
    offset = len(head) - len(head) % 4  # multiples of 4 up to the first that fits
    while len(head) + len(f"file: . {offset}\nEND\n") > offset:
        offset += 4
    tail = f"file: . {offset}\nEND\n".encode("latin-1")
    return head + tail + b"\0" * (offset - len(head) - len(tail))
