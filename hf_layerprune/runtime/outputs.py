"""Write outputs atomically, and never replace anything but our own earlier output.

- Everything is written into a temporary sibling directory (``.NAME.tmp-XXXX``) that is renamed into place at the end;
  a failure removes it, and a run killed hard (SIGKILL, power loss) leaves it behind with an owner file naming its
  process: the next run on the same output removes such leftovers once their process is gone.
- ``--overwrite`` replaces only an empty directory or a previous hf-layerprune output (a directory holding our
  ``layerprune.json``); an output that is the source, lies inside it, or contains it is refused before any work.
- Every check that can fail (parent missing, a regular file on the path, a read-only or full filesystem) runs
  before the model is loaded, and ends in one ``OutputError`` line.
- Every output path, folder or file (``--output-dir``, ``--log-json``, ``--json``, ``--plot``, a sweep's root), goes
  through ``check_path``: not a symbolic link, not a FIFO, socket or device, not the source nor inside it, not inside
  a model folder (one holding ``config.json``, ``layerprune.json`` or weights) nor a weight file by name. Files are
  written to a temporary sibling and renamed (``atomic_file``), so a reader never sees half a file and a failed
  write leaves the old one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from hf_layerprune.runtime.errors import OutputError, describe_os_error
REPORT_FILENAME = "layerprune.json"  # the mark of our own output (the run record, report.py)


OWNER_FILE = ".layerprune-staging"  # inside a staging directory: "<host> <pid>" of the run writing it
MODEL_MARKS = ("config.json", REPORT_FILENAME, "model.safetensors.index.json")  # a folder holding one is a model's
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")


def is_our_output(path: Path) -> bool:
    return (path / REPORT_FILENAME).is_file()


def is_model_folder(path: Path) -> bool:
    try:
        return path.is_dir() and (any((path / name).is_file() for name in MODEL_MARKS)
                                  or any(path.glob("*.safetensors")))
    except OSError:
        return False


def check_path(path: Path, option: str, sources: Iterable[str | Path] = (), *, directory: bool = False,
               inside: Iterable[str | Path] = ()) -> None:
    """The checks every output shares (module docstring); `inside`: other outputs of the run it must not enter."""
    if path.is_symlink():
        raise OutputError(f"{option} {path} is a symbolic link; give the path it points to, or another")
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise OutputError(f"{option} {path} is not a regular file (a FIFO, socket or device); give a file path")
    resolved = path.resolve()
    for source in sources:
        _refuse_overlap(resolved, Path(source).expanduser().resolve(), path, option)
    for other in inside:
        other = Path(other).expanduser().resolve()
        if resolved == other or other in resolved.parents:
            raise OutputError(f"{option} {path} is inside the run's output {other}, which is replaced at its end; "
                              "write it elsewhere")
    if not directory and resolved.name.endswith(WEIGHT_SUFFIXES + MODEL_MARKS):
        raise OutputError(f"{option} {path} names a model file; give another file name")
    folder = next((p for p in resolved.parents if is_model_folder(p)), None)
    if folder is not None:
        raise OutputError(f"{option} {path} is inside the model folder {folder}; write it outside any model folder")


def check_output_dir(path: str | Path, overwrite: bool, sources: Iterable[str | Path] = (),
                     option: str = "--output-dir") -> Path:
    """Fail before any work when `path` may not be written: see the module docstring for the rules."""
    path = Path(path).expanduser()
    check_path(path, option, sources, directory=True)
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


def model_paths(model: str) -> list[Path]:
    """What an output must not touch, from MODEL as given: the local folder or file, or the Hub cache."""
    path = Path(model).expanduser()
    if path.exists():
        return [path]
    from huggingface_hub import constants

    return [Path(constants.HF_HUB_CACHE)]


def check_output_file(path: str | Path | None, option: str, sources: Iterable[str | Path] = (),
                      inside: Iterable[str | Path] = ()) -> None:
    """A file the command will write (``--json``, ``--plot``, ``--log-json``): not a directory, in a writable
    directory, and everything ``check_path`` refuses."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{option} {path} is a directory; give a file name")
    check_path(path, option, sources, inside=inside)
    parent = path.parent
    blocker = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"cannot write {option} {path}: {blocker} is a file, not a directory")
    if parent.is_dir():
        _check_writable(parent)


def _refuse_overlap(output: Path, source: Path, shown: Path, option: str = "--output-dir") -> None:
    if output == source:
        raise OutputError(f"{option} {shown} is the source model itself; choose another path")
    if source in output.parents:
        raise OutputError(f"{option} {shown} is inside the source model {source}; choose a path outside it")
    if output in source.parents:
        raise OutputError(f"{option} {shown} contains the source model {source}; replacing it would delete the "
                          "source: choose another directory")


def temp_sibling(path: Path) -> Path:
    """A fresh name next to `path` for writing it (same suffix: matplotlib picks the format from it), named after
    this host and process; such files of this host's processes that are gone (killed runs) are removed first."""
    mine = f".{path.name}.tmp-{socket.gethostname()}-"
    for leftover in path.parent.glob(f"{glob.escape(mine)}*"):
        if leftover.is_file() and not leftover.is_symlink() and not _pid_alive(leftover.name[len(mine):].split("-")[0]):
            leftover.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{mine}{os.getpid()}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())  # the mode open(path, "w") would give, not mkstemp's 0600
    return Path(name)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def usual_modes(folder: Path) -> None:
    """Give `folder` and the files in it the modes `mkdir` / `open(path, "w")` would have given (not mkdtemp's and
    mkstemp's 0700 / 0600: transformers' `save_pretrained` writes its shards through mkstemp), so that an output is
    as readable as any other file the user writes."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it is renamed onto `path`, else removed."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {describe_os_error(exc)}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {describe_os_error(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    return _pid_alive(pid)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
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


def work_dir(prefix: str) -> Path:
    """A private temporary folder (``push`` builds its model there) with an owner file; leftovers of killed runs
    with the same prefix (an owner file whose process is gone) are removed first. `release` before keeping one."""
    for leftover in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        if leftover.is_dir() and not leftover.is_symlink() and (leftover / OWNER_FILE).is_file() \
                and not _owner_alive(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return work


def release(work: Path) -> None:
    """Keep `work` for the user: without its owner file no later run removes it."""
    (work / OWNER_FILE).unlink(missing_ok=True)


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
        usual_modes(tmp)
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
