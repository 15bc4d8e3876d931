"""Atomic file writes and write failures, and whether a saved file reads back (torch-free).

A reader never sees half a file and a failed or killed writer leaves no partial one (its temporary file is
removed when the write fails). A write that fails for a reason of the disk (no space, quota, read-only,
permissions) is a `WriteError` naming the file or directory that was being written, so the app reports it as
one line (`write_error` finds one in any exception, e.g. torch's checkpoint writer's RuntimeError).
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Failures of the disk, never of the code: reported as one line naming the path.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}
# Also while writing (inside `writing` or an atomic write): permissions.
WRITE_ERRNOS = DISK_ERRNOS | {errno.EACCES, errno.EPERM}
_RUST_IO = re.compile(r"Os \{ code: (\d+)")  # safetensors' serializer reports an io::Error as text
# torch.save's zip writer reports a failed write as a RuntimeError without its errno.
_TORCH_WRITER = re.compile(r"PytorchStreamWriter failed|inline_container\.cc.*unexpected pos")


class WriteError(OSError):
    """A write that failed: `filename` is the file or directory being written, `strerror` the cause."""

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, "")
        hint = (
            " (free space or raise the quota, or move output_root)"
            if self.errno in (errno.ENOSPC, errno.EDQUOT)
            else ""
        )
        return f"cannot write {self.filename}: {self.strerror}" + (f" [{name}]" if name else "") + hint


def write_error(exc: BaseException, path: str | os.PathLike | None = None) -> WriteError | None:
    """The disk failure in `exc`'s chain as a WriteError naming its file (else `path`); None if there is none.

    Only errors of the disk (DISK_ERRNOS) count, unless `path` is given: the caller was writing it, so a
    permission error counts too."""
    allowed = WRITE_ERRNOS if path is not None else DISK_ERRNOS
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, WriteError):
            return e
        code = e.errno if isinstance(e, OSError) else None
        if code is None:
            m = _RUST_IO.search(str(e))
            code = int(m.group(1)) if m else None
        where = getattr(e, "filename", None) or path
        if code in allowed and where is not None:
            return WriteError(code, os.strerror(code), str(where))
    if path is not None and any(_TORCH_WRITER.search(str(e)) for e in chain):
        code = errno.ENOSPC if _nearly_full(path) else errno.EIO
        return WriteError(code, os.strerror(code), str(path))
    return None


def _nearly_full(path: str | os.PathLike) -> bool:
    """Whether the file system of `path` (or its nearest existing parent) has under 1 MiB free."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 2**20


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Raise a disk or permission failure inside as a WriteError naming `path`
    (or the file it names itself)."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        found = write_error(e, path)
        if found is None:
            raise
        raise found from e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync, then rename over `path` (parents created).

    On failure the temporary file is removed and a disk or permission error is raised as a WriteError naming
    `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system: nothing was written either
            pass
        found = write_error(e, path) if isinstance(e, OSError) else None
        if found is None:
            raise
        found.filename = str(path)
        raise found from e


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically (atomic_write_bytes)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (optimizer.pt, scheduler.pt, rng_state.pth) is a zip archive


def _safetensors_problem(f, size: int) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes: the header's
    last `data_offsets` end must be the file's end."""
    head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
    if 8 + n > size:
        return f"truncated: a {size}-byte file with a {n}-byte header"
    header = json.loads(f.read(n))
    ends = [t["data_offsets"][1] for key, t in header.items() if key != "__metadata__"]
    end = 8 + n + max(ends, default=0)
    return None if end == size else f"truncated: its tensors end at byte {end}, the file at byte {size}"


def unreadable(path: str | os.PathLike) -> str | None:
    """Why a saved file does not read back, judged by its kind without loading it (None when it reads):
    JSON parses; a safetensors file's header parses and its tensors end where the file ends; a zip archive
    (torch.save's format) is complete and every member passes its CRC check. Other files are not judged."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty"
        if path.suffix == ".json":
            json.loads(path.read_text())
            return None
        with open(path, "rb") as f:
            if path.suffix == ".safetensors":
                return _safetensors_problem(f, size)
            if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return None
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        return f"corrupted: {bad} fails its CRC check" if bad else None
    except (OSError, ValueError, LookupError, TypeError, zipfile.BadZipFile, EOFError) as e:
        # ValueError: JSON and UTF-8 errors; BadZipFile: a zip archive cut short (no central directory)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"truncated or corrupted ({reason})"
