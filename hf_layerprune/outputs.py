"""Write outputs atomically, and never replace anything but our own earlier output.

- Everything is written into a temporary sibling directory (``.NAME.tmp-XXXX``) that is renamed into place at the end;
  a failure removes it, and a run killed hard (SIGKILL, power loss) leaves it behind with an owner file naming its
  process: the next run on the same output removes such leftovers once their process is gone.
- ``--overwrite`` replaces only an empty directory or a previous hf-layerprune output (a directory holding our
  ``layerprune.json``); an output that is the source, lies inside it, or contains it is refused before any work.
- Every check that can fail (parent missing, a regular file on the path, a read-only or full filesystem) runs
  before the model is loaded, and ends in one ``OutputError`` line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from hf_layerprune.errors import OutputError, describe_os_error
from hf_layerprune.report import REPORT_FILENAME  # the mark of our own output


OWNER_FILE = ".layerprune-staging"  # inside a staging directory: "<host> <pid>" of the run writing it


def is_our_output(path: Path) -> bool:
    return (path / REPORT_FILENAME).is_file()


def check_output_dir(path: str | Path, overwrite: bool, sources: Iterable[str | Path] = ()) -> Path:
    """Fail before any work when `path` may not be written: see the module docstring for the rules."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    for source in sources:
        _refuse_overlap(resolved, Path(source).expanduser().resolve(), path)
    parent = path.parent
    if not parent.exists():
        blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"cannot create {path}: {blocker} is a file, not a directory")
        raise OutputError(f"parent directory of {path} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot create {path}: {parent} is a file, not a directory")
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise OutputError(f"output path {path} exists and is not a directory")
        if not overwrite:
            raise OutputError(f"output directory {path} already exists; pass --overwrite to replace it")
        if any(p.name != OWNER_FILE for p in path.iterdir()) and not is_our_output(path):
            raise OutputError(f"{path} is not an hf-layerprune output (it has no {REPORT_FILENAME}) and is not empty; "
                              "--overwrite only replaces an earlier output or an empty directory: choose another --output-dir")
    _check_writable(parent)
    return path


def check_output_file(path: str | Path | None, option: str) -> None:
    """A file the command will write (``--json``, ``--plot``): not a directory, in a writable directory."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    parent = path.parent
    blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"cannot write {option} {path}: {blocker} is a file, not a directory")
    if parent.is_dir():
        _check_writable(parent)


def _refuse_overlap(output: Path, source: Path, shown: Path) -> None:
    if output == source:
        raise OutputError(f"--output-dir {shown} is the source model itself; choose another directory")
    if source in output.parents:
        raise OutputError(f"--output-dir {shown} is inside the source model {source}; choose a directory outside it")
    if output in source.parents:
        raise OutputError(f"--output-dir {shown} contains the source model {source}; replacing it would delete the "
                          "source: choose another directory")


def _check_writable(parent: Path) -> None:
    """Create and remove a probe directory: catches read-only filesystems, missing permissions and a full disk."""
    try:
        probe = tempfile.mkdtemp(prefix=".layerprune-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {describe_os_error(exc)}") from None


# --- leftovers of killed runs -------------------------------------------------------------------------------------


def _owner_alive(staging: Path) -> bool:
    try:
        host, pid = (staging / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False  # no owner file: from before owner files, or killed before it was written
    if host != socket.gethostname():
        return True  # another machine's run on a shared filesystem: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def clean_stale_staging(final: Path) -> list[Path]:
    """Remove the staging/old directories a killed run left next to `final`; return what was removed."""
    removed = []
    for leftover in sorted(final.parent.glob(f".{final.name}.tmp-*")) + sorted(final.parent.glob(f".{final.name}.old-*")):
        if leftover.is_dir() and not leftover.is_symlink() and not _owner_alive(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


@contextlib.contextmanager
def staging_dir(final: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory next to `final`; on success it replaces `final`, else it is removed."""
    final = check_output_dir(final, overwrite, sources)
    clean_stale_staging(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as exc:
        raise OutputError(f"cannot write in {final.parent}: {describe_os_error(exc)}") from None
    try:
        yield tmp
        (tmp / OWNER_FILE).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        check_output_dir(final, overwrite)  # again: the target may have appeared while we worked
        if final.exists():
            old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            final.rename(old)
        tmp.rename(final)
    except (OSError, OutputError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            old.rename(final)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"could not move the output into {final}: {describe_os_error(exc)}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
