"""An output format added in one file: a NumPy `.npz` of the state dict, with its writer, verifier, card usage
block and tag. `with registered():` makes it known to `--format`, the save stage, `upload`'s folder check, the
card and the help for the duration of the block (tests/test_registry.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hf_layerprune.runtime.errors import CheckpointError
from hf_layerprune.runtime.formats import OUTPUT_FORMATS, OutputFormat

FILE = "model.npz"


def write(model, tokenizer, recipe, folder: Path, *, source, removed, card=None) -> dict:
    import numpy as np

    state = {name: tensor.detach().float().cpu().numpy() for name, tensor in model.state_dict().items()}
    np.savez(Path(folder) / FILE, **state)
    return {"file": FILE, "tensors": len(state)}


def verify(folder: Path) -> None:
    import zipfile

    import numpy as np

    try:
        with np.load(Path(folder) / FILE) as data:
            if not data.files:
                raise ValueError("no arrays")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{Path(folder) / FILE} is not a whole .npz archive ({exc})") from None


def usage(record: dict, load_id: str) -> str:
    return f"NumPy: `numpy.load(\"{record['file']}\")` holds the {record['tensors']} tensors by name."


NPZ = OutputFormat("npz", "a NumPy archive of the state dict (toy)", writer=f"{__name__}:write", files=("*.npz",),
                   verifier=f"{__name__}:verify", usage=f"{__name__}:usage", record="npz", tags=("npz",))


@contextmanager
def registered():
    with OUTPUT_FORMATS.registered(NPZ):
        yield NPZ
