"""Write outputs atomically: into a temporary sibling directory that is renamed into place at the end."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from hf_layerprune.errors import LayerPruneError


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Fail before any work when `path` exists and may not be replaced."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise LayerPruneError(f"output directory {path} already exists; pass --overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise LayerPruneError(f"output path {path} exists and is not a directory")
    if not path.parent.exists():
        raise LayerPruneError(f"parent directory of {path} does not exist")
    return path


@contextlib.contextmanager
def staging_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory next to `final`; on success it replaces `final`, else it is removed."""
    final = check_output_dir(final, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
