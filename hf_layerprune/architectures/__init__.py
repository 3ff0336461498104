"""Architecture adapters: one registry of per-family facts, described as data (see base.Architecture).

Each family is a few lines in `families.py`. `get_architecture(model_type)` looks one up and fails with a
one-line error naming the type and the supported list.
"""

from hf_layerprune.architectures.base import ARCHITECTURES, Architecture, get_architecture, register, supported_model_types
from hf_layerprune.architectures import families  # noqa: F401  (registers the built-in families)

__all__ = ["ARCHITECTURES", "Architecture", "get_architecture", "register", "supported_model_types"]
