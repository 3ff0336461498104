"""Verify the GGUF files of a push by reading them back from the Hub.

`publish_folder` uploads every file of the output folder, so a `.gguf` file travels with the safetensors (or
alone, for `--format gguf`). After the commit, each GGUF file is downloaded from the pushed revision into a
throw-away cache: its SHA-256 must equal the local file's, and its header must parse with the block count and
tensor count the local file has. A GGUF-only folder has no config.json: the transformers reload is skipped.

A `--format both` folder is published as two repos (the Hub's release checklist): the pruned model in `repo_id`,
then the GGUF in `<repo_id>-GGUF` (or `--gguf-repo-id`) whose card names the pruned repo as its `base_model` with
`base_model_relation: quantized` (`split_views`). The second push starts only after the first is verified; when it
fails, the first stays published and `GgufPushError` says how to push the GGUF alone (`upload --gguf-only`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hf_layerprune.runtime.errors import LayerPruneError


def gguf_files(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).glob("*.gguf"))


def check_gguf_files(directory: Path) -> None:
    """The gguf format's verifier: every .gguf file of `directory` has a readable header and tensor table that
    fits the file (gguf_surgery.read_header; one CheckpointError line otherwise)."""
    from hf_layerprune.surgery.gguf_surgery import read_header

    for name in gguf_files(directory):
        read_header(Path(directory) / name).buf.close()


def is_gguf_folder(directory: Path) -> bool:
    """A `--format gguf` output: GGUF file(s), no safetensors."""
    return bool(gguf_files(directory)) and not any(Path(directory).glob("*.safetensors"))


# --- its own repo: `push --format both` ------------------------------------------------------------------------
class GgufPushError(LayerPruneError):
    """The pruned repo was published and verified; the GGUF repo's push then failed (resume with `--gguf-only`)."""


def default_gguf_repo(repo_id: str) -> str:
    return f"{repo_id}-GGUF"


def has_both(directory: Path) -> bool:
    """A `--format both` output: safetensors and GGUF in one folder, published as two repos."""
    return bool(gguf_files(directory)) and any(Path(directory).glob("*.safetensors"))


@contextmanager
def split_views(directory: Path, report, repo_id: str, gguf_repo_id: str) -> Iterator[tuple[Path, Path]]:
    """Two folders to publish, inside `directory/.publish/` (hidden, removed afterwards; files hard-linked):

    - the pruned model without the GGUF, its card pointing to `gguf_repo_id` for the GGUF;
    - the GGUF with `layerprune.json` and a card whose `base_model` is `repo_id` with `base_model_relation:
      quantized`, so that the Hub's model tree shows base -> pruned -> GGUF."""
    from hf_layerprune.card import PLOT_FILES, render_card
    from hf_layerprune.hub import local_files
    from hf_layerprune.report.provenance import CARD_FILENAME
    from hf_layerprune.report import REPORT_FILENAME, write_report

    directory = Path(directory)
    root = directory / ".publish"
    shutil.rmtree(root, ignore_errors=True)
    model_view, gguf_view = root / "model", root / "gguf"
    rendered = {CARD_FILENAME, REPORT_FILENAME, *PLOT_FILES.values()}  # written anew in each view
    try:
        for view, repo, extra in ((model_view, repo_id, {"gguf_repo": gguf_repo_id}),
                                  (gguf_view, gguf_repo_id, {"gguf_of": repo_id})):
            view.mkdir(parents=True)
            for name in local_files(directory):
                if name not in rendered and name.endswith(".gguf") == (view == gguf_view):
                    _link(directory / name, view / name)
            written = write_report(view, dataclasses.replace(report, **extra))
            render_card(view, written, repo_id=repo)
        yield model_view, gguf_view
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)
