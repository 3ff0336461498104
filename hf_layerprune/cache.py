"""Where hf-layerprune keeps its caches (lm-eval results, rendered task YAMLs): ``$LAYERPRUNE_CACHE``, else
``$XDG_CACHE_HOME/hf-layerprune`` or ``~/.cache/hf-layerprune``. Its own module so that light code (provenance)
finds it without importing the evaluation stack."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("LAYERPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hf-layerprune"
    )
    return Path(base)
