"""Command-line interface. Each command lives in its own module and registers itself on `app`."""

from hf_layerprune.cli.app import app
from hf_layerprune.cli import prune  # noqa: F401  (registers commands)


def main() -> None:
    app()
