"""Plain file I/O: atomic writes, advisory locks, leftovers of killed writes, and file hashes."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; exclusive atomic writes alone keep a saved split
    fcntl = None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[str], None], exclusive: bool = False) -> bool:
    """Call write(temp_path) next to path, then move it into place: readers never see half a file.

    With exclusive, a path that exists (say, published first by another process) is left alone and False returned.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name lets remove_stale_temp_files tell a killed write from one in progress.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # whole, and never over a file another process published first
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: the caller's lock keeps the replace exclusive
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def file_lock(lock_path: Path, waiting: str | None = None, log=print) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) for the block; others wait, and `waiting` is logged if we must."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    log(waiting)
                fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@contextmanager
def removed_on_failure(folders: Iterable[Path], own: Iterable[str] = ()) -> Iterator[None]:
    """If the block fails, remove again each of the folders (and their parents) that it created, as long as they
    hold nothing but files named in `own` (its lock files): a refused start leaves no folder behind."""
    new: set[Path] = set()
    for folder in folders:
        folder = Path(folder).absolute()
        while not folder.exists() and folder != folder.parent:
            new.add(folder)
            folder = folder.parent
    own = set(own)
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=lambda f: len(f.parts), reverse=True):  # the deepest first
            try:
                names = {p.name for p in folder.iterdir()}
                if names <= own:
                    for name in names:
                        (folder / name).unlink()
                    folder.rmdir()
            except OSError:  # gone, or filled meanwhile by another process: leave it
                pass
        raise


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the temp files of atomic writes whose writing process is gone (killed mid-write)."""
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is None or not _alive(pid):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: Path, text: str, exclusive: bool = False) -> bool:
    """Atomically write a text file (see atomic_write)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), exclusive)
