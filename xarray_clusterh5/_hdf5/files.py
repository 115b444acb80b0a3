"""Safe HDF5 access: read-only opening, refusal of links to other files, errors
that name the file, atomic writes, and decoding of hdf5r's attribute types.

Imports h5py and NumPy only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

# re-exported: the readers and writers raise them from here
from xarray_clusterh5.errors import ClusterH5Error as ClusterH5Error
from xarray_clusterh5.errors import CorruptFileError as CorruptFileError
from xarray_clusterh5.errors import FileLockedError as FileLockedError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


#: what h5py, zlib and file reading raise on damaged bytes
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    RuntimeError,
    KeyError,
    ValueError,
    EOFError,
    zlib.error,
)


@contextlib.contextmanager
def named_errors(
    path: str | os.PathLike[str],
    doing: str,
    obj: str | None = None,
    *,
    catch: tuple[type[BaseException], ...] = READ_ERRORS,
) -> Iterator[None]:
    """Turn low-level read errors into a ``CorruptFileError`` naming the file.

    The innermost ``named_errors`` names the object: a ``ClusterH5Error`` raised
    inside passes through unchanged, and so does ``FileNotFoundError`` (a
    missing file is not a damaged one).

    Parameters
    ----------
    path : the file, named first in the message.
    doing : what was being done, e.g. ``"reading voxel data"``.
    obj : the HDF5 object (``/scans/rest/clusters/cluster_12``), if known.
    catch : the exception types to convert (default ``READ_ERRORS``).
    """
    try:
        yield
    except (ClusterH5Error, FileNotFoundError):
        raise
    except catch as err:
        raise CorruptFileError(path, _problem(doing, obj, err)) from err


def _problem(doing: str, obj: str | None, err: BaseException) -> str:
    detail = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    where = f"{obj}: " if obj else ""
    kind = type(err).__name__
    return (
        f"{where}{doing} failed ({kind}: {detail or 'no detail'}); "
        "the file may be damaged or truncated"
    )


def has_hdf5_signature(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the HDF5 superblock signature.

    HDF5 allows a user block of 512 * 2**n bytes before the superblock; fmristore
    and ModelArray never write one, so offset 0 is enough for guessing.
    """
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def open_h5(
    path: Any,
    mode: str = "r",
    *,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> h5py.File:
    """Open an HDF5 file, turning h5py's low-level errors into ClusterH5Error.

    The one file-opening function for every source: a local path, an fsspec
    URL (read-only, through a block cache; ``storage_options`` go to fsspec)
    or an open binary file object. This is the opener given to xarray's
    ``CachingFileManager``: a module-level function, so it pickles by
    reference into dask workers.
    """
    from xarray_clusterh5._hdf5 import remote

    if locking is not None:
        kwargs["locking"] = locking
    if rdcc_nbytes is not None:
        kwargs["rdcc_nbytes"] = rdcc_nbytes
    if remote.is_url(path) or remote.is_file_like(path):
        return _open_file_object(path, mode, storage_options, kwargs)
    path = os.fspath(path)
    if mode == "r":
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        if os.path.isdir(path):
            raise ClusterH5Error(path, "is a directory, not an HDF5 file")
        if not has_hdf5_signature(path):
            raise ClusterH5Error(path, "not an HDF5 file (no HDF5 signature)")
    try:
        return h5py.File(path, mode, **kwargs)
    except OSError as err:
        if _is_lock_error(err):
            raise FileLockedError(
                path,
                "is locked: another process has it open for writing (HDF5 file "
                "locking). Wait for that process to finish, or, if nothing is "
                "writing it (a crashed writer, a file system without locks), "
                f"open it with locking=False ({err})",
            ) from err
        raise CorruptFileError(
            path, f"cannot be opened as HDF5 (truncated or corrupt?): {err}"
        ) from err


class _OwningFile(h5py.File):
    """An h5py file on a file object it opened, and closes with itself."""

    _clusterh5_fileobj: Any = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._clusterh5_fileobj is not None:
                self._clusterh5_fileobj.close()
                self._clusterh5_fileobj = None


def _open_file_object(
    source: Any, mode: str, storage_options: dict[str, Any] | None, kwargs: dict
) -> h5py.File:
    """h5py on a URL (opened here, closed with the file) or a caller's file object."""
    from xarray_clusterh5._hdf5 import remote

    name = remote.display_name(source)
    if mode != "r":
        raise ClusterH5Error(name, "URLs and file objects are opened read-only")
    kwargs.pop("locking", None)  # HDF5 file locking applies to local files only
    owned = remote.is_url(source)
    fileobj = remote.open_url(source, storage_options) if owned else source
    try:
        fileobj.seek(0)
        if fileobj.read(8) != HDF5_SIGNATURE:
            raise ClusterH5Error(name, "not an HDF5 file (no HDF5 signature)")
        fileobj.seek(0)
        f = (_OwningFile if owned else h5py.File)(fileobj, "r", **kwargs)
    except ClusterH5Error:
        if owned:
            fileobj.close()
        raise
    except Exception as err:
        if owned:
            fileobj.close()
        detail = remote.scrub(str(err), storage_options, name if owned else "")
        raise CorruptFileError(
            name, f"cannot be opened as HDF5 (truncated or corrupt?): {detail}"
        ) from None
    if owned:
        f._clusterh5_fileobj = fileobj
    return f


def _is_lock_error(err: OSError) -> bool:
    """h5py's error when another process holds an HDF5 file lock on the file."""
    return err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) and (
        "lock" in str(err).lower()
    )


def check_local_object(path: str | os.PathLike[str], obj: h5py.HLObject) -> None:
    """Refuse a dataset that would make HDF5 read another file.

    External links resolve through ``File.get(...)``; virtual datasets and
    external raw storage are read transparently by libhdf5. Neither belongs
    in an fmristore or ModelArray file, and following them could read any
    file the user can read.
    """
    if isinstance(obj, h5py.Dataset):
        if obj.is_virtual:
            raise ClusterH5Error(
                path, f"{obj.name} is a virtual dataset; refusing to read other files"
            )
        if obj.external:
            raise ClusterH5Error(
                path, f"{obj.name} stores its data in external files; refusing"
            )


def get_link(
    path: str | os.PathLike[str], f: h5py.File | h5py.Group, name: str
) -> h5py.HLObject | None:
    """``f[name]`` or None when absent; refuses external and dangling links.

    Damaged links, symbol tables or object headers give a ``CorruptFileError``
    naming the object looked up.
    """
    parent = f
    if name.startswith("/"):
        parent = f.file
    where = name if name.startswith("/") else f"{f.name.rstrip('/')}/{name}"
    with named_errors(path, "looking up the object", where):
        return _follow(path, parent, [p for p in name.split("/") if p])


def _follow(
    path: str | os.PathLike[str], parent: h5py.HLObject, parts: list[str]
) -> h5py.HLObject | None:
    for part in parts:
        if not isinstance(parent, h5py.Group) or part not in parent:
            return None
        link = parent.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise ClusterH5Error(
                path,
                f"{parent.name.rstrip('/')}/{part} is an external link to "
                f"{link.filename}; refusing to follow links into other files",
            )
        try:
            parent = parent[part]
        except KeyError as err:
            if not isinstance(link, h5py.SoftLink):
                raise  # a hard link to an object that does not open: damaged
            raise ClusterH5Error(
                path, f"{parent.name.rstrip('/')}/{part} is a dangling link"
            ) from err
    check_local_object(path, parent)
    return parent


def decode_str(value: Any) -> str:
    """Decode an h5py string value (bytes, str, 0-d or 1-element array) as UTF-8.

    hdf5r flags strings ASCII but R writes its own (normally UTF-8) bytes.
    """
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one string, got shape {value.shape}")
        value = value.ravel()[0]
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8").rstrip("\x00")
    return str(value)


def read_attr_str(obj: h5py.HLObject, name: str) -> str | None:
    """A string attribute as hdf5r writes it (1-element array) or a plain scalar."""
    if name not in obj.attrs:
        return None
    return decode_str(obj.attrs[name])


def read_strings(path: str | os.PathLike[str], dset: h5py.Dataset) -> np.ndarray:
    """A string dataset (vlen or fixed, any shape) as a NumPy array of str."""
    if dset.dtype.kind not in "SOU":
        raise ClusterH5Error(path, f"{dset.name} should hold strings, not {dset.dtype}")
    with named_errors(path, "reading strings", dset.name):
        raw = dset[()]
    arr = np.asarray(raw, dtype=object)
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        out[idx] = decode_str(v).rstrip()
    return out.astype(str) if out.size else np.array([], dtype=str)


def output_folder(
    folder: str | os.PathLike[str], *, create: bool = False, parents: bool = False
) -> Path:
    """The folder outputs go into, checked (and made) before anything is written.

    A missing folder is refused as ``open()`` would refuse it, with a
    ``ClusterH5Error`` naming the first folder that does not exist, unless
    ``parents`` (make every missing folder, as ``mkdir -p``) or ``create``
    (make the folder itself when its parent exists: an output folder).
    """
    path = Path(folder)
    if path.is_dir():
        return path
    if path.exists():
        raise ClusterH5Error(path, "is not a folder; cannot write files into it")
    if parents or (create and path.parent.is_dir()):
        path.mkdir(parents=True, exist_ok=True)
        return path
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    raise ClusterH5Error(
        path,
        f"no such folder: {top} does not exist; create it first, or pass "
        "parents=True to make missing folders",
    )


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    suffix: str = ".tmp",
    parents: bool = False,
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place on success.

    Nothing is overwritten unless ``overwrite=True``; on any exception the
    temporary file is removed and an existing target is left untouched. The
    folder must exist unless ``parents=True`` (see :func:`output_folder`).
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: exists; pass overwrite=True to replace it")
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a directory")
    output_folder(target.parent, parents=parents)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the result the permissions of a normal file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
