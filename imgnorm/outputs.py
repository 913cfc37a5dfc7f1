"""The outputs of a run: checked before any pixel is read, written to temporary
files beside their targets, and committed together at the end or not at all.

- A target that exists is replaced only with ``force``; one that appears while
  the run works is never replaced without it (the final name is created with
  ``renameat2(RENAME_NOREPLACE)``, or a hard link, never by a plain rename).
- A target that is not a regular file (a device such as ``/dev/null``, a FIFO,
  standard output as ``-``) is never replaced: a document is written into it as
  shell redirection would, and a format that needs a regular file is refused.
- Every temporary file is named after its target and this process, and held
  open under an exclusive ``flock`` while the run lives: a later run to the
  same target removes the temporaries whose owner is gone (killed with
  SIGKILL, or a lost machine), and no other.
- The disk space of every temporary file is reserved up front, so a full disk
  fails before the work, not after it (a directory output, a Zarr store: the
  free space is checked instead).
- A directory output (a Zarr store) is built in a temporary directory and
  renamed into place the same way; with ``force`` it replaces only a directory
  that is a Zarr store (an atomic exchange), never any other folder.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
from dataclasses import dataclass, field

from .errors import OptionError, OutputError, show_path
from .interrupts import held

TMP_SUFFIX = ".imgnorm-tmp"


@dataclass
class Output:
    """One output of a run.

    ``path`` is as the user gave it; ``target`` the file that will hold the
    result (symlinks resolved), or ``"-"`` for standard output. A ``stream``
    output is written into its target at commit (a device, a FIFO, standard
    output); every other one is renamed into place from ``tmp``.
    """

    path: str
    option: str
    target: str
    stream: bool = False
    seekable: bool = False
    directory: str | None = None  # a folder output's kind (a key of FOLDERS)
    tmp: str | None = None
    content: bytes | None = None
    _fd: int | None = field(default=None, repr=False)
    _identity: tuple = field(default=(), repr=False)


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether an output path names a Zarr store (by its extension, ``.zarr``)."""
    return os.fspath(path).rstrip(os.sep).lower().endswith(".zarr")


def _is_zarr_store(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "zarr.json"))


PART = re.compile(r"^[^/]+\.\d{10}\.h5$")  # a committed part file's name (imgnorm.store.part_name)


def _is_parts_folder(path: str) -> bool:
    try:
        return all(PART.match(n) for n in os.listdir(path))
    except OSError:
        return False


# The folders an output can be, each with its name and the test of one that
# may be replaced (with --force): never any other folder.
FOLDERS = {"zarr": ("a Zarr store (a folder holding zarr.json)", _is_zarr_store),
           "parts": ("a folder of imgnorm HDF5 part files", _is_parts_folder)}


class OutputSet:
    """The outputs of one run; use as a context manager around the run.

    Parameters
    ----------
    force : bool
        Replace targets that exist (regular files only).

    On leaving the ``with`` block by an exception (a failed run, Ctrl-C,
    SIGTERM) every temporary file is removed and no target is touched. Call
    :meth:`commit` inside the block to put every output in place.
    """

    def __init__(self, force: bool = False, inputs: dict[str, str | None] | None = None, *,
                 dry_run: bool = False):
        self.force = force
        self.dry_run = dry_run  # check the paths only: no temporary file is made
        self.inputs = {what: _identity_of(path) for what, path in (inputs or {}).items()}
        self.outputs: list[Output] = []
        self._scratch: list[tuple[str, int]] = []  # (path, fd) of temporaries that never become outputs
        self.committed = False

    # ------------------------------------------------------------ planning

    def add(self, path: str | os.PathLike, option: str, *, seekable: bool = False, directory: str | None = None,
            what: str = "") -> Output:
        """Check ``path`` as a target for ``option`` and make its temporary file.

        ``seekable`` outputs (HDF5) need a regular file; ``directory`` ones (of
        :data:`FOLDERS`: ``"zarr"``, a Zarr store, or ``"parts"``, HDF5 part
        files) a folder, made as a temporary directory; others (documents,
        pictures) can also be written into a device, a FIFO or standard
        output (``-``). Raises :class:`OptionError` (a usage error, exit 2)
        when the path cannot or must not be written; nothing is left behind.
        """
        path = os.fspath(path)
        try:
            here = os.stat(path)
        except OSError:
            here = None
        for source, identity in self.inputs.items():
            if here is not None and identity == (here.st_dev, here.st_ino):
                raise OptionError(f"{show_path(path)} is the run's own input ({source}); write to another file",
                                  option=option)
        if directory:
            path = path.rstrip(os.sep) or path
            out = self._resolve_directory(path, option, what or "this output", directory)
        else:
            out = self._resolve(path, option, seekable, what or "this output")
        for other in self.outputs:
            if other._identity == out._identity:
                raise OptionError(f"{other.option} and {option} both name {show_path(path)}; give each output "
                                  "its own file", option=option)
        if not out.stream and self.dry_run:
            folder = os.path.dirname(out.target)
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OptionError(f"cannot create a file in {show_path(folder)} (Permission denied); choose a "
                                  "folder you can write to", option=option)
        elif not out.stream:
            with held():  # made and recorded as one step: a signal between them would leave it behind
                out.tmp, out._fd = self._make_temp(out.target, option, directory=out.directory)
                self.outputs.append(out)
            return out
        self.outputs.append(out)
        return out

    def _resolve(self, path: str, option: str, seekable: bool, what: str) -> Output:
        if path == "":
            raise OptionError("is empty; give a file name", option=option)
        if path == "-":
            if seekable:
                raise OptionError(f"cannot write {what} to standard output (it needs a seekable file); give a "
                                  "file name", option=option)
            return Output(path, option, "-", stream=True, _identity=("stdout",))
        if path.endswith(os.sep) or os.path.basename(path) in (".", ".."):
            raise OptionError(f"{show_path(path)} names a folder; give a file name", option=option)
        try:
            st = os.stat(path)  # through symlinks, /proc's magic links included
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OptionError(f"{show_path(path)}: cannot check it ({e.strerror})", option=option) from None
        if st is None:  # absent, or a dangling link: the file its last link names
            target = os.path.realpath(path)
            folder = os.path.dirname(target)
            if not os.path.isdir(folder):
                raise OptionError(f"{show_path(path)}: folder {show_path(folder)} does not exist; create it first",
                                  option=option)
            return Output(path, option, target, seekable=seekable, _identity=("new", target))
        if stat.S_ISDIR(st.st_mode):
            raise OptionError(f"{show_path(path)} is a folder; give a file name", option=option)
        if not stat.S_ISREG(st.st_mode):  # never replaced: written into, as `> path` would
            if seekable:
                raise OptionError(f"{show_path(path)} is {_kind(st.st_mode)}, not a regular file; {what} needs "
                                  "one", option=option)
            return Output(path, option, path, stream=True, _identity=(st.st_dev, st.st_ino))
        if not self.force:
            raise OptionError(f"{show_path(path)} exists; pass --force to replace it", option=option)
        return Output(path, option, os.path.realpath(path), seekable=seekable, _identity=(st.st_dev, st.st_ino))

    def _resolve_directory(self, path: str, option: str, what: str, kind: str) -> Output:
        """A directory output: absent, or with ``force`` a folder of its ``kind`` to replace."""
        if path in ("", "-"):
            raise OptionError(f"{what} is a folder; give a name such as out.zarr", option=option)
        if os.path.basename(path) in (".", ".."):
            raise OptionError(f"{show_path(path)} names a folder that is not the output's; give a new name",
                              option=option)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OptionError(f"{show_path(path)}: cannot check it ({e.strerror})", option=option) from None
        target = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
        if st is None:
            folder = os.path.dirname(target)
            if not os.path.isdir(folder):
                raise OptionError(f"{show_path(path)}: folder {show_path(folder)} does not exist; create it first",
                                  option=option)
            return Output(path, option, target, seekable=True, directory=kind, _identity=("new", target))
        name, is_kind = FOLDERS[kind]
        if not stat.S_ISDIR(st.st_mode):
            raise OptionError(f"{show_path(path)} is {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}"
                              f", not {name}; {what} is a folder: give another name", option=option)
        if not self.force:
            raise OptionError(f"{show_path(path)} exists; pass --force to replace it", option=option)
        if not is_kind(path):
            raise OptionError(f"{show_path(path)} is a folder that is not {name}; imgnorm replaces only "
                              f"{name} there, even with --force: give another name", option=option)
        return Output(path, option, target, seekable=True, directory=kind, _identity=(st.st_dev, st.st_ino))

    def _make_temp(self, target: str, option: str, kind: str = "", directory: bool = False) -> tuple[str, int]:
        """A new temporary file (or directory) beside ``target``, held under our lock."""
        folder, base = os.path.split(target)
        remove_stale(folder, base)
        pid = os.getpid()
        for _ in range(100):
            tmp = os.path.join(folder, f".{base}.{pid}.{secrets.token_hex(4)}{kind}{TMP_SUFFIX}")
            try:
                if directory:
                    os.mkdir(tmp, 0o700)
                    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                else:
                    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise OptionError(f"cannot create a file in {show_path(folder)} ({e.strerror}); choose a folder "
                                  "you can write to", option=option) from None
        else:  # pragma: no cover
            raise OutputError(f"cannot create a temporary file in {show_path(folder)}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "my owner is alive", for remove_stale()
        except OSError:
            pass  # no locks on this file system: the file is never taken for stale
        return tmp, fd

    def scratch(self, beside: Output) -> str:
        """A temporary file beside ``beside`` for the run's own use, removed at the end."""
        with held():
            tmp, fd = self._make_temp(beside.target, beside.option, ".cache")
            self._scratch.append((tmp, fd))
        return tmp

    def reserve(self, sizes: dict[str, int]) -> None:
        """Allocate disk space for temporary files (path -> bytes) before the work.

        Raises
        ------
        OutputError
            Not enough space: the message gives what the run needs and what is
            free, and every reservation is given back first.
        """
        done = []
        try:
            for path, nbytes in sizes.items():
                reserve(path, nbytes)
                done.append(path)
        except OSError as e:
            for path in done:
                if os.path.isfile(path):
                    os.truncate(path, 0)
            first = next(iter(sizes))
            free = shutil.disk_usage(os.path.dirname(first)).free
            if e.errno in (errno.ENOSPC, errno.EFBIG):
                why = "not enough disk space" if e.errno == errno.ENOSPC else "over the file size limit"
                parts = ", ".join(f"{human_bytes(n)} for {self._label(p)}" for p, n in sizes.items())
                raise OutputError(f"{show_path(self.outputs[0].path)}: cannot write ({why}: the run needs up to "
                                  f"{human_bytes(sum(sizes.values()))} ({parts}), {human_bytes(free)} free); nothing was "
                                  "written") from None
            raise OutputError(f"{show_path(first)}: cannot reserve disk space ({e.strerror or e})") from None

    def _label(self, tmp: str) -> str:
        for out in self.outputs:
            if out.tmp == tmp:
                return show_path(out.path)
        return "decoded pixels kept between the two passes"

    # ------------------------------------------------------------ finishing

    def set_content(self, out: Output, data: bytes) -> None:
        """The whole content of a small output (a document, a picture), written at commit."""
        out.content = data
        if out.tmp is not None:
            try:
                os.ftruncate(out._fd, 0)
                os.pwrite(out._fd, data, 0) if data else None
                if os.fstat(out._fd).st_size != len(data):
                    raise OSError(errno.EIO, "short write")
            except OSError as e:
                raise write_error(out, e) from None

    def commit(self) -> None:
        """Put every output in place, or none of them.

        Files are renamed into place first (never over a file that appeared
        meanwhile, unless ``force``), then stream outputs are written; if any
        step fails, what was already put in place is taken back.
        """
        done: list[tuple[Output, str | None]] = []  # (output, backup of the file it replaced)
        try:
            for out in self.outputs:
                if not out.stream:
                    done.append((out, self._rename_into_place(out)))
            for out in self.outputs:
                if out.stream:
                    self._write_stream(out)
        except BaseException:
            for out, backup in reversed(done):
                _take_back(out, backup)
            raise
        for _, backup in done:
            if backup:
                _unlink(backup)
        self.committed = True

    def _rename_into_place(self, out: Output) -> str | None:
        umask = os.umask(0)
        os.umask(umask)
        # temporaries are made 0600 (0700); outputs get the usual permissions
        os.fchmod(out._fd, (0o777 if out.directory else 0o666) & ~umask)
        if out.directory:
            return self._move_directory_into_place(out)
        if not self.force:
            return self._into_free_name(out)
        backup = None
        try:
            st = os.lstat(out.target)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{show_path(out.path)} became {_kind(st.st_mode)} while imgnorm was running; it "
                              "was not replaced; nothing was written")
        if st is not None:
            backup = out.tmp[:-len(TMP_SUFFIX)] + ".old" + TMP_SUFFIX
            try:
                os.link(out.target, backup)  # kept until every output is in place, to take this one back
            except OSError:
                backup = None
        try:
            os.replace(out.tmp, out.target)
        except OSError as e:
            if backup:
                _unlink(backup)
            raise write_error(out, e) from None
        out.tmp = None
        return backup

    def _move_directory_into_place(self, out: Output) -> str | None:
        """A directory output: renamed to a name that is free, or with ``force``
        exchanged atomically with the Zarr store there (kept as the backup)."""
        try:
            st = os.lstat(out.target)
        except FileNotFoundError:
            st = None
        if st is not None and self.force:
            name, is_kind = FOLDERS[out.directory]
            if not stat.S_ISDIR(st.st_mode) or not is_kind(out.target):
                raise OutputError(f"{show_path(out.path)} became something that is not {name} while imgnorm was "
                                  "running; it was not replaced; nothing was written")
            backup = out.tmp[:-len(TMP_SUFFIX)] + ".old" + TMP_SUFFIX
            try:
                _exchange(out.tmp, out.target)
                os.rename(out.tmp, backup)  # the old store, removed once every output is in place
            except OSError as e:
                raise write_error(out, e) from None
            out.tmp = None
            return backup
        return self._into_free_name(out)

    def _into_free_name(self, out: Output) -> None:
        """Rename the temporary to the target, which must not exist (it may have appeared meanwhile)."""
        try:
            _rename_noreplace(out.tmp, out.target, directory=bool(out.directory))
        except FileExistsError:
            raise OutputError(f"{show_path(out.path)} appeared while imgnorm was running; it was not "
                              "replaced (pass --force to replace it); nothing was written") from None
        except OSError as e:
            raise write_error(out, e) from None
        out.tmp = None
        return None

    def _write_stream(self, out: Output) -> None:
        data = out.content or b""
        try:
            if out.target == "-":
                stream = sys.stdout.buffer
                stream.write(data)
                stream.flush()
            else:
                with open(out.target, "wb") as f:  # as `> target` would: a device, a FIFO
                    f.write(data)
        except OSError as e:
            if out.target == "-":
                raise OutputError(f"cannot write to standard output ({e.strerror or e}); check where it is "
                                  "redirected") from None
            raise write_error(out, e) from None

    def close(self) -> None:
        """Remove every temporary file that is left and let go of the locks."""
        for out in self.outputs:
            if out.tmp is not None:
                _unlink(out.tmp)
                out.tmp = None
            if out._fd is not None:
                os.close(out._fd)
                out._fd = None
        for path, fd in self._scratch:
            _unlink(path)
            os.close(fd)
        self._scratch = []

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def _identity_of(path: str | None) -> tuple | None:
    if not path or path == "-":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_TMP_NAME = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{8}(\.cache|\.old)?" + re.escape(TMP_SUFFIX) + "$", re.S)


def remove_stale(folder: str, base: str) -> list[str]:
    """Remove the temporaries of ``folder/base`` left by runs that are gone.

    A temporary file is held under an exclusive ``flock`` by the process that
    made it, for as long as that process lives: the lock is free only when
    that process is gone (whatever pid namespace it ran in). A backup link
    (``.old``) is taken for stale when its process id no longer exists.
    Returns the paths removed.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TMP_NAME.match(name)
        if not m or m.group(1) != base:
            continue
        path = os.path.join(folder, name)
        if m.group(3) == ".old":
            if _pid_gone(int(m.group(2))):
                removed += [path] if _unlink(path) else []
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner holds it: a run in progress
        finally:
            os.close(fd)
        removed += [path] if _unlink(path) else []
    return removed


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _unlink(path: str) -> bool:
    """Remove a file, a symlink, or a directory tree (a temporary Zarr store)."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.lexists(path)


def _take_back(out: Output, backup: str | None) -> None:
    """Undo a rename into place: the replaced file comes back, or the new one goes."""
    try:
        if backup and out.directory:
            _exchange(backup, out.target)  # the old store back; the new one (now the backup's name) goes
            _unlink(backup)
        elif backup:
            os.replace(backup, out.target)
        else:
            _unlink(out.target)
    except OSError:
        pass


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (OSError, AttributeError):  # not glibc 2.28+: hard links instead
    _renameat2 = None


def _exchange(a: str, b: str) -> None:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``)."""
    if _renameat2 is None or _renameat2(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno() if _renameat2 is not None else errno.ENOSYS
        raise OSError(err, f"cannot exchange the new store with the old one ({os.strerror(err)})", b)


def _rename_noreplace(src: str, dst: str, directory: bool = False) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError), atomically."""
    if _renameat2 is not None:
        at_fdcwd = -100
        if _renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot: fall back
            raise OSError(err, os.strerror(err), dst)
    if directory:  # no hard links to directories: check, then rename (rename() would replace an empty one)
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", dst)
        os.rename(src, dst)
        return
    try:
        os.link(src, dst)  # fails if dst exists
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # no hard links either (FAT, some FUSE): check, then rename; a small window
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "File exists", dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def write_error(out: Output, e: OSError) -> OutputError:
    """The error of a failed write of ``out`` (disk full, quota, a lost mount): nothing was written."""
    return OutputError(f"{show_path(out.path)}: cannot write ({describe_os_error(e)}); nothing was written")


def describe_os_error(e: OSError) -> str:
    """A few words for a failed write: disk full, file too large, or the system's own words."""
    text = str(e)
    if e.strerror and e.strerror.startswith(("not enough disk space", "over the file size limit")):
        return e.strerror  # from reserve(): it says how much is needed
    if e.errno == errno.ENOSPC or "No space left" in text:
        return "disk full"
    if e.errno == errno.EFBIG or "File too large" in text:
        return "file too large for this file system or limit"
    return e.strerror or (text.splitlines()[0] if text else type(e).__name__)


def reserve(path: str, nbytes: int) -> None:
    """Allocate disk blocks for a file before anything is written into it.

    A full disk then fails here, at once and cleanly, instead of inside HDF5
    after hours of work: HDF5 (1.14 and 2.0 alike) can crash the process at
    exit once a write has failed with dirty chunks in its cache. A failed
    reservation gives back what it took, and says what is free.
    """
    if os.path.isdir(path):  # a directory output: no blocks to reserve, the free space is checked
        free = shutil.disk_usage(path).free
        if free < nbytes:
            raise OSError(errno.ENOSPC, f"not enough disk space: the output needs up to {human_bytes(nbytes)}, "
                                        f"{human_bytes(free)} free")
        return
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG):
            os.ftruncate(fd, 0)  # a partial allocation would hold the disk full
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
            why = ("not enough disk space" if e.errno == errno.ENOSPC else "over the file size limit")
            raise OSError(e.errno, f"{why}: the output needs up to {human_bytes(nbytes)}, "
                                   f"{human_bytes(free)} free") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here: go on unreserved
            raise
    finally:
        os.close(fd)


def human_bytes(n: float) -> str:
    """A size for people: bytes, KiB, MiB, GiB or TiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
