"""Opening a caller-named path confined beneath a root folder (the inbox).

Checking a path and then opening it by name again is a race: in between, a folder
can be exchanged for a symlink (``renameat2(RENAME_EXCHANGE)``) and the open lands
outside the inbox. So the file is opened once, from a handle on the inbox root,
without ever following a symlink, then checked with ``fstat``; the caller stages from
that same handle:

- ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` where the
  kernel has it (Linux 5.6+); otherwise one component at a time, each opened with
  ``O_NOFOLLOW`` relative to the handle of the folder before it. Either way no
  symlink is followed and nothing resolves outside the root.
- ``O_NONBLOCK``, so a FIFO cannot hang intake. FIFOs, devices and sockets are refused
  by ``lstat`` before they are opened, and ``fstat`` checks again after the open.
- exactly one link (``st_nlink == 1``). A hard link in the inbox can name a file
  outside it, and no check of the path can tell the two apart.

The root is the operator's own setting and may be a symlink. It is resolved once per
process (:func:`pin_root`; a worker does it at start-up) and then opened component by
component without following symlinks, so a root (or a folder above it) replaced by a
symlink later fails closed instead of moving the inbox; after that only its handle is
used.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import SubmissionError

ENV = "DOX_INBOX_ROOT"
MAX_PATH_BYTES = 4095  # PATH_MAX less the terminating NUL

_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # O_PATH is Linux-only: a handle that reads nothing
_FOLDER_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCAL_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# openat2(2): Python has no binding, so call it through libc's syscall(2).
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
# No such syscall, a seccomp filter (containers) refusing it, or an older struct/flag set.
_UNAVAILABLE = {errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL}


@dataclass(frozen=True)
class OpenedDocument:
    """A document opened for reading, and the file name to record for it (valid UTF-8)."""

    file: BinaryIO
    name: str


def open_document(path: str | os.PathLike[str], root: Path | None, *, required: bool) -> OpenedDocument:
    """Open the document a caller named: beneath ``root`` if there is one.

    ``required`` says the path came from another service, which may name files
    only inside the inbox. With no inbox configured, a local caller's path belongs to
    the operator: it is opened as given (relative to the current folder), and still
    only a regular file is accepted.
    """
    text = _checked_text(path)
    if root is None:
        if required:
            raise SubmissionError(f"paths from other services need {ENV}: set it to the shared inbox folder")
        return _open_local(text)
    return open_beneath(root, text)


def open_beneath(root: Path, path: str | os.PathLike[str]) -> OpenedDocument:
    """Open ``path`` (relative to ``root``, or absolute inside it) without leaving ``root``.

    Raises :class:`SubmissionError` with a message that names the reason: ``..``,
    outside the inbox, a symlink, a hard link, no such file (and the folder looked
    in), or not a regular file.
    """
    text = _checked_text(path)
    real_root = pin_root(root)
    *folders, name = _parts_beneath(text, root, real_root)
    root_fd = _open_root(real_root)
    try:
        parent = _open_folders(root_fd, folders, text, real_root)
    finally:
        os.close(root_fd)
    try:
        return _open_file(parent, name, text, os.path.join(real_root, *folders), real_root)
    finally:
        os.close(parent)


def _checked_text(path: str | os.PathLike[str]) -> str:
    """The path as text, refused early if the kernel could only fail on it later (or worse)."""
    raw = os.fspath(path)
    text = os.fsdecode(raw) if isinstance(raw, bytes) else raw
    if not text:
        raise SubmissionError("refused '': the path is empty")
    if "\x00" in text:
        raise SubmissionError(f"refused {text!r}: a path cannot contain a NUL byte")
    try:
        size = len(os.fsencode(text))
    except UnicodeEncodeError as exc:  # e.g. a lone surrogate sent in JSON
        raise SubmissionError(f"refused {text!r}: not a valid file name") from exc
    if size > MAX_PATH_BYTES:
        raise SubmissionError(f"refused a path of {size} bytes: paths are at most {MAX_PATH_BYTES} bytes")
    return text


def _parts_beneath(text: str, root: Path, real_root: str) -> list[str]:
    """The components of ``text`` below the root (lexically: nothing is looked up here)."""
    if ".." in text.split("/"):
        raise SubmissionError(f"refused {text!r}: '..' is not allowed in inbox paths")
    if text.endswith("/"):
        raise SubmissionError(f"not a regular file: {text!r} ends with '/', so it names a folder")
    # With no '..' left, normpath only drops empty and '.' components: it cannot move up.
    norm = os.path.normpath(text)
    if os.path.isabs(norm):
        norm = "/" + norm.lstrip("/")  # POSIX keeps a leading '//': it names '/' too
        # The root as configured (it may be a symlink) and as resolved: either spelling is inside.
        for base in dict.fromkeys((os.path.abspath(root), real_root)):
            prefix = base.rstrip("/") + "/"
            if norm == base or norm.startswith(prefix):
                norm = norm[len(prefix) :] if norm.startswith(prefix) else "."
                break
        else:
            raise SubmissionError(f"refused {text!r}: it lies outside the inbox {real_root!r} ({ENV})")
    if norm == ".":
        raise SubmissionError(f"not a regular file: {text!r} is the inbox folder itself")
    return norm.split("/")


_PINNED: dict[str, str] = {}


def pin_root(root: Path) -> str:
    """The inbox root as this process resolved it the first time it was asked."""
    key = os.fspath(root)
    real = _PINNED.get(key)
    if real is None:
        real = _PINNED.setdefault(key, os.path.realpath(root))
    return real


def _open_root(real_root: str) -> int:
    """A handle on the pinned root, each component opened with ``O_NOFOLLOW`` from ``/``."""
    fd = os.open("/", _FOLDER_FLAGS)
    where = "/"
    for part in Path(real_root).parts[1:]:
        try:
            nxt = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            why = (
                f"{os.path.join(where, part)!r} is now a symlink or not a folder"
                if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                else exc.strerror
            )
            raise SubmissionError(
                f"the inbox {real_root!r} ({ENV}) cannot be opened: {why} (it changed since this"
                " process started: restart it once the inbox is as configured)"
            ) from exc
        os.close(fd)
        fd = nxt
        where = os.path.join(where, part)
    return fd


def _open_folders(root_fd: int, folders: list[str], text: str, real_root: str) -> int:
    """A handle on the folder that holds the file, reached without following a symlink."""
    if folders:
        try:
            return _openat2(root_fd, "/".join(folders), _FOLDER_FLAGS)
        except (_Unavailable, OSError):
            pass  # the walk below is as safe, and its refusal names the component at fault
    fd = os.dup(root_fd)
    where = real_root
    for folder in folders:
        try:
            # O_NOFOLLOW: a symlink here fails (ENOTDIR/ELOOP) instead of being followed.
            nxt = os.open(folder, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            refusal = _refusal(exc, fd, folder, text, where, real_root, folder=True)
            os.close(fd)
            raise refusal from exc
        os.close(fd)
        fd = nxt
        where = os.path.join(where, folder)
    return fd


def _open_file(parent: int, name: str, text: str, where: str, real_root: str) -> OpenedDocument:
    """Open ``name`` in the folder handle ``parent``; check that handle, not the name."""
    try:
        before = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise _refusal(exc, parent, name, text, where, real_root) from exc
    if stat.S_ISLNK(before.st_mode):
        raise _symlink(text, name, real_root)
    _refuse_unless_regular(before.st_mode, text)  # a FIFO or device is never even opened
    try:
        try:
            fd = _openat2(parent, name, _FILE_FLAGS)
        except _Unavailable:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise _refusal(exc, parent, name, text, where, real_root) from exc
    try:
        st = os.fstat(fd)
        _refuse_unless_regular(st.st_mode, text)
        if st.st_nlink != 1:
            raise SubmissionError(
                f"{text!r} has {st.st_nlink} hard links: refused, a hard link can point at a file"
                f" outside the inbox {real_root!r} (copy the file into the inbox instead)"
            )
        # The link count is read after the open: a second name removed in between would
        # pass it. The name must still lead to this very file, with its one link.
        try:
            after = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            after = None
        if after is None or (after.st_dev, after.st_ino, after.st_nlink) != (st.st_dev, st.st_ino, 1):
            raise SubmissionError(f"refused {text!r}: it changed while it was being opened")
        os.set_blocking(fd, True)  # O_NONBLOCK was for the open; reads of a regular file block anyway
        return OpenedDocument(os.fdopen(fd, "rb"), _display_name(name))
    except BaseException:
        os.close(fd)
        raise


def _open_local(text: str) -> OpenedDocument:
    """The operator's own path, opened as given; only a regular file is accepted."""
    full = os.path.join(os.getcwd(), text)  # join keeps an absolute path as it is
    try:
        fd = os.open(text, _LOCAL_FLAGS)
    except FileNotFoundError as exc:
        raise SubmissionError(f"no such file: {text!r} (looked in {os.path.dirname(full)!r})") from exc
    except OSError as exc:
        raise SubmissionError(f"could not open {text!r}: {exc.strerror}") from exc
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode, text)
        os.set_blocking(fd, True)
        return OpenedDocument(os.fdopen(fd, "rb"), _display_name(os.path.basename(full)))
    except BaseException:
        os.close(fd)
        raise


def _refuse_unless_regular(mode: int, text: str) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    )
    kind = next((word for test, word in kinds if test(mode)), "a special file")
    raise SubmissionError(f"not a regular file: {text!r} is {kind}")


def _symlink(text: str, name: str, real_root: str) -> SubmissionError:
    return SubmissionError(
        f"refused {text!r}: {name!r} is a symlink, and inbox paths never follow symlinks"
        f" (one can lead outside the inbox {real_root!r}, {ENV})"
    )


def _refusal(
    exc: OSError, dir_fd: int, name: str, text: str, where: str, real_root: str, *, folder: bool = False
) -> SubmissionError:
    """Say why ``name`` in ``where`` could not be opened, from what is there now (never followed)."""
    if exc.errno == errno.ENAMETOOLONG:
        return SubmissionError(f"refused {text!r}: a name in it is longer than the filesystem allows")
    try:
        mode: int | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        return _symlink(text, name, real_root)
    expected = stat.S_ISDIR if folder else stat.S_ISREG
    if mode is not None and expected(mode) and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        # It failed as a symlink or as missing, and looks fine now: swapped meanwhile.
        return SubmissionError(f"refused {text!r}: {name!r} changed while it was being opened")
    if mode is None or exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if folder and mode is not None:
            return SubmissionError(f"no such file: {text!r} ({name!r} in {where!r} is not a folder)")
        if folder:
            return SubmissionError(f"no such file: {text!r} (no folder {name!r} in {where!r})")
        return SubmissionError(f"no such file: {text!r} (looked in {where!r})")
    return SubmissionError(f"could not open {text!r} in the inbox: {exc.strerror}")


def _display_name(component: str) -> str:
    """A file name that any database accepts: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(component).decode("utf-8", "replace")


class _Unavailable(Exception):
    """openat2 cannot be used here; the per-component walk is used instead."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> Callable[..., int] | None:
    if sys.platform != "linux" or platform.machine() not in _SYS_OPENAT2:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall  # our own CDLL: argtypes stay ours
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_OpenHow), ctypes.c_size_t]
    number = _SYS_OPENAT2[platform.machine()]

    def openat2(dir_fd: int, path: bytes, how: _OpenHow) -> int:
        return int(fn(number, dir_fd, path, ctypes.byref(how), ctypes.sizeof(how)))

    return openat2


_syscall = _load_syscall()


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    """``openat2(dir_fd, path, flags, RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS)``.

    Raises :class:`_Unavailable` (and stops trying, for this process) where the
    kernel or a seccomp filter lacks it.
    """
    global _syscall
    fn = _syscall
    if fn is None:
        raise _Unavailable
    how = _OpenHow(flags, 0, _RESOLVE)
    fd = fn(dir_fd, os.fsencode(path), how)
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err in _UNAVAILABLE:
        _syscall = None
        raise _Unavailable
    raise OSError(err, os.strerror(err), path)
