"""Third-party imports that must stay quiet: bitsandbytes only when 4-bit work is asked for, no Hub kernels.

peft 0.21 imports bitsandbytes whenever it is installed (`peft/helpers.py`), and transformers' Trainer imports peft,
so every run that trains or merely imports the Trainer imported bitsandbytes. bitsandbytes 0.50 on a CPU with
AVX512-BF16 then tries, at import, to download and run a kernel from the Hub (`kernels-community/quantization-
bitsandbytes`, through the `kernels` package, a dependency of transformers) and prints a warning when that fails.
Nobody asked for either.

The CLI calls `hide_bitsandbytes()` before anything imports peft: `sys.modules["bitsandbytes"] = None` makes
`importlib.util.find_spec` answer None and `import bitsandbytes` raise ImportError, which peft and transformers
both read as "not installed". `allow_bitsandbytes()` (called by `quantized.check_available`, the entry of every
4-bit route) undoes that, clears the cached availability answers, and imports bitsandbytes with the `kernels`
package out of reach, so its CPU backend uses its own native kernels. Set `HF_LAYERPRUNE_HUB_KERNELS=1` to let
bitsandbytes fetch its Hub kernel (the `kernels` package's own trust settings then apply).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys

HUB_KERNELS_ENV = "HF_LAYERPRUNE_HUB_KERNELS"


def hub_kernels_allowed() -> bool:
    return os.environ.get(HUB_KERNELS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def hide_bitsandbytes() -> None:
    """Make bitsandbytes look absent to peft and transformers until `allow_bitsandbytes()` (no-op once imported)."""
    sys.modules.setdefault("bitsandbytes", None)


def _clear_cached_answers() -> None:
    """peft and transformers cache "is bitsandbytes available" (functools.lru_cache): ask again."""
    for module_name in ("peft.import_utils", "transformers.utils.import_utils", "transformers.utils"):
        module = sys.modules.get(module_name)
        for name in dir(module) if module is not None else ():
            if "bnb" in name or "bitsandbytes" in name:
                cache_clear = getattr(getattr(module, name), "cache_clear", None)
                if cache_clear is not None:
                    cache_clear()


@contextlib.contextmanager
def _without_hub_kernels():
    """`from kernels import get_kernel` fails inside this block, and bitsandbytes' warning about it is dropped."""
    if hub_kernels_allowed():
        yield
        return
    saved = sys.modules.get("kernels", ...)
    sys.modules["kernels"] = None
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    drop = _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        if saved is ...:
            sys.modules.pop("kernels", None)
        else:
            sys.modules["kernels"] = saved


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def allow_bitsandbytes():
    """Import bitsandbytes for 4-bit work (without Hub kernels) and let peft/transformers see it; None when absent."""
    if sys.modules.get("bitsandbytes", ...) is None:
        del sys.modules["bitsandbytes"]
        _clear_cached_answers()
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    try:
        with _without_hub_kernels():
            import bitsandbytes
    except ImportError:
        return None
    helpers = sys.modules.get("peft.helpers")  # peft binds the module at its own import
    if helpers is not None and getattr(helpers, "bnb", None) is None:
        helpers.bnb = bitsandbytes
    return bitsandbytes
