"""Names that end up as HDF5 link names or as parts of file names.

Shared by both formats; no imports beyond the standard library.
"""

from __future__ import annotations


def check_hdf5_name(name: str, what: str) -> str:
    """Return ``name`` if it can be one HDF5 link name, else raise ValueError.

    Neither fmristore nor ModelArrayIO sanitises names; a ``/`` would silently
    create nested groups and ``.`` / ``..`` are not valid link names.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    if "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"{what} {name!r} is not a valid HDF5 name (no '/', NUL, '.')")
    return name


def safe_output_name(name: str, what: str = "name") -> str:
    """ModelArrayIO's file-name sanitising (spaces and ``/`` to ``_``), made safe.

    Backslashes, NUL and other control characters also become ``_`` and empty
    names are refused. The result is only ever used as part of a file name
    (``<analysis>_<stat>``, ``<scalar>_<output>``, ``<run>.dtseries.nii``), never
    as a path component of its own, so a name read from a file cannot leave the
    output folder.
    """
    text = str(name).replace(" ", "_").replace("/", "_").replace("\\", "_")
    text = "".join("_" if ord(c) < 32 else c for c in text)
    if not text:
        raise ValueError(f"{what} {name!r} cannot be used in a file name")
    return text
