"""Command-line interface. Each command lives in its own module and registers itself on `app`."""

from hf_layerprune.cli.app import app
from hf_layerprune.cli import prune  # noqa: F401  (registers commands)
from hf_layerprune.cli import analyze  # noqa: F401
from hf_layerprune.cli import upload, push, sweep  # noqa: F401
from hf_layerprune.cli import evaluate, card, collection  # noqa: F401


def main() -> None:
    app()
