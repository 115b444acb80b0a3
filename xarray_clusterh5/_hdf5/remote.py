"""Remote and file-like sources: fsspec URLs and open binary file objects.

``open_h5`` (files.py) hands everything that is not a local path here. A URL
(``https://``, ``s3://``, ``gs://``, ``memory://``, any fsspec protocol) is
opened through fsspec with a block cache: HDF5 reads metadata and chunks in
many small pieces, and a cache of large blocks turns them into a few ranged
requests (each block is fetched once, however often HDF5 returns to it).
Messages name the URL without credentials.

fsspec is optional (``pip install xarray-clusterh5[remote]``); it is imported
only when a URL is opened.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: fsspec block size and cache bounds. HDF5 interleaves metadata with chunk
#: data, so opening a file touches a block per scan object or so; 4 MiB blocks
#: take most of a file's metadata in a few round trips (1 MiB blocks: 23
#: requests to open the 87 MB benchmark file, 4 MiB: 14, at 20 ms each).
#: Reading many clusters walks forward through the file: each sequential miss
#: doubles the blocks fetched at once, up to ``MAX_AHEAD_BYTES`` a request,
#: so a whole file costs a few requests, not one per block.
BLOCK_SIZE = 4 * 2**20
MAX_CACHED_BYTES = 256 * 2**20  # per open file
MAX_AHEAD_BYTES = 16 * 2**20

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(source: Any) -> bool:
    """True for ``protocol://...`` strings other than ``file://``."""
    return (
        isinstance(source, str)
        and bool(_SCHEME.match(source))
        and not source.startswith("file://")
    )


def is_file_like(source: Any) -> bool:
    """An open binary file object (``read``, ``seek`` and ``tell``)."""
    return all(hasattr(source, a) for a in ("read", "seek", "tell"))


def display_name(source: Any) -> str:
    """How messages name a source: a path, a URL without user info, or a file name."""
    if is_url(source):
        parts = urlsplit(source)
        netloc = parts.netloc.rsplit("@", 1)[-1]  # drop user:password@
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    name = getattr(source, "path", None) or getattr(source, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def scrub(text: str, storage_options: dict[str, Any] | None, url: str) -> str:
    """``text`` without the URL's user info and any secret-looking option value."""
    secrets: list[str] = []
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if userinfo:
        secrets.append(userinfo)

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, str) and len(value) >= 4:
            secrets.append(value)

    collect(storage_options or {})
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class Options(dict[str, Any]):
    """``storage_options`` that xarray's file manager can hash into its key.

    Its ``repr`` hides the values (they are often credentials).
    """

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(_freeze(self))

    def __repr__(self) -> str:
        return f"Options({sorted(self)} -> ***)"


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def open_url(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Open ``url`` read-only through fsspec with a block cache.

    Raises
    ------
    FileNotFoundError, ClusterH5Error
        Naming the URL (never credentials).
    """
    from xarray_clusterh5.errors import ClusterH5Error

    name = display_name(url)
    try:
        import fsspec
    except ModuleNotFoundError as err:
        raise ClusterH5Error(
            name,
            "opening URLs needs fsspec: pip install 'xarray-clusterh5[remote]'",
        ) from err
    try:
        fs, fs_path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        _register_cache()
        try:
            return fs.open(
                fs_path, "rb", block_size=BLOCK_SIZE, cache_type=ReadAheadCache.name
            )
        except TypeError:  # file systems without fsspec caches (memory://)
            return fs.open(fs_path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except Exception as err:
        detail = scrub(f"{type(err).__name__}: {err}", storage_options, url)
        raise ClusterH5Error(name, f"cannot be opened ({detail})") from None


def _register_cache() -> None:
    import fsspec.caching

    if ReadAheadCache.name not in fsspec.caching.caches:
        fsspec.caching.register_cache(_cache_class())


def _cache_class() -> type:
    """``ReadAheadCache`` as an fsspec cache (fsspec imported only here)."""
    import fsspec.caching

    return type("ReadAheadCache", (ReadAheadCache, fsspec.caching.BaseCache), {})


class ReadAheadCache:
    """An LRU block cache that fetches growing runs of blocks when reading walks on.

    A miss shortly after the previously fetched run is taken as sequential
    reading and fetches twice as many blocks as last time (up to
    ``MAX_AHEAD_BYTES``) in one ranged request; any other miss fetches one block.
    Mixed into ``fsspec.caching.BaseCache`` by ``_cache_class``.
    """

    name = "clusterh5-readahead"
    blocksize: int
    fetcher: Callable[[int, int], bytes]
    size: int

    def __init__(self, blocksize: int, fetcher: Any, size: int, **_: Any) -> None:
        super().__init__(blocksize, fetcher, size)  # type: ignore[call-arg]
        self.nblocks = math.ceil(size / blocksize) if blocksize else 0
        # tuning: any counts >= 1 return the same bytes; memory and requests vary
        unit = max(blocksize, 1)  # pragma: no mutate
        self.max_blocks = max(1, MAX_CACHED_BYTES // unit)  # pragma: no mutate
        self.max_ahead = max(1, MAX_AHEAD_BYTES // unit)  # pragma: no mutate
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.ahead = 1
        self.next_sequential = -1
        self.lock = threading.Lock()

    def _fetch(self, start: int | None, stop: int | None) -> bytes:
        start = 0 if start is None else start
        stop = self.size if stop is None else min(stop, self.size)
        if start >= stop:
            return b""
        first, last = start // self.blocksize, (stop - 1) // self.blocksize
        with self.lock:
            self._ensure(first, last)
            parts = [self.blocks[i] for i in range(first, last + 1)]
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        offset = start - first * self.blocksize
        return data[offset : offset + stop - start]

    def _ensure(self, first: int, last: int) -> None:
        missing = [i for i in range(first, last + 1) if i not in self.blocks]
        for i in range(first, last + 1):
            if i in self.blocks:
                self.blocks.move_to_end(i)
        if not missing:
            return
        i = missing[0]
        # forward of the last run, within a small gap: reading walks the file
        # (metadata blocks between datasets may be skipped over)
        if 0 <= i - self.next_sequential <= 2 * self.ahead + 2:
            self.ahead = min(2 * self.ahead, self.max_ahead)
        else:
            self.ahead = 1
        stop = min(self.nblocks, max(last + 1, i + self.ahead))
        todo = [j for j in range(i, stop) if j not in self.blocks]
        self.next_sequential = stop
        # one ranged request for the whole run of blocks (cached ones inside
        # it are fetched again: cheaper than another round trip)
        bs = self.blocksize
        lo, hi = todo[0], todo[-1] + 1
        data = self.fetcher(lo * bs, min(self.size, hi * bs))
        for j in range(lo, hi):
            self.blocks[j] = data[(j - lo) * bs : (j - lo + 1) * bs]
            self.blocks.move_to_end(j)
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)


_copies_dir: Any = None


def local_copies(
    urls: list[str], storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Download ``urls`` once into a temporary folder removed at exit.

    For inputs read whole (cohort CIFTI files): one request per file instead
    of one per header and block. Errors name the URL, never credentials.
    """
    import hashlib
    import tempfile

    global _copies_dir
    if _copies_dir is None:
        _copies_dir = tempfile.TemporaryDirectory(prefix="clusterh5-sources-")
    out = []
    for url in urls:
        name = display_name(url)
        key = hashlib.sha256(url.encode()).hexdigest()[:20]
        local = os.path.join(_copies_dir.name, f"{key}-{os.path.basename(name)}")
        if not os.path.exists(local):
            _download(url, name, local, storage_options)
        out.append(local)
    return out


def _download(
    url: str, name: str, local: str, storage_options: dict[str, Any] | None
) -> None:
    # streamed in blocks under a temporary name: a large source never sits in
    # memory whole, and a failed download leaves nothing behind
    import shutil

    part = f"{local}.part"
    try:
        with open_url(url, storage_options) as src, open(part, "wb") as dst:
            try:
                shutil.copyfileobj(src, dst, BLOCK_SIZE)
            except FileNotFoundError:
                raise FileNotFoundError(f"{name}: no such file") from None
            except Exception as err:
                detail = scrub(f"{type(err).__name__}: {err}", storage_options, url)
                raise _error(name, f"cannot be read ({detail})") from None
        os.replace(part, local)
    finally:
        if os.path.exists(part):
            os.remove(part)


def _error(name: str, problem: str) -> Exception:
    from xarray_clusterh5.errors import ClusterH5Error

    return ClusterH5Error(name, problem)
