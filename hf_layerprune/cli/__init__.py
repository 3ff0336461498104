"""Command-line interface. Each command lives in its own module and registers itself on `app`."""

from hf_layerprune.runtime.third_party import hide_bitsandbytes

hide_bitsandbytes()  # before any command imports peft (which imports bitsandbytes); 4-bit routes allow it again

from hf_layerprune.cli.app import app  # noqa: E402
from hf_layerprune.cli import prune  # noqa: F401, E402  (registers commands)
from hf_layerprune.cli import analyze  # noqa: F401, E402
from hf_layerprune.cli import upload, push, sweep  # noqa: F401, E402
from hf_layerprune.cli import evaluate, card, collection  # noqa: F401, E402


def main() -> None:
    app()
