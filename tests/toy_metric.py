"""A metric added in one file: the class (with everything the card and the help say about it), its options and the
paper it cites. `with registered():` makes it known to the CLI, `analyze --metric all`, the card and its
references for the duration of the block (tests/test_registry.py)."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from hf_layerprune.card import BIBLIOGRAPHY, Citation
from hf_layerprune.runtime.errors import ConfigError
from hf_layerprune.scoring import METRICS, Metric, Scores

PAPER = Citation(
    "toy2026",
    "Toy depth, Example et al., 2026",
    "https://example.org/toy-depth",
    "@article{example2026toy,\n  title = {Toy Depth},\n  author = {Example, Ada},\n  year = {2026}\n}",
)


@dataclass
class ToyOptions:
    """Options of ``--metric toy``.

    reverse: score the last layer highest instead of the first.
    scale: multiplies every score (must be positive).
    """

    reverse: bool = False
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ConfigError(f"toy scale must be positive (got {self.scale})")


class ToyDepth(Metric):
    """A rule that needs no calibration: a layer's importance is its depth (or the reverse)."""

    name = "toy"
    summary = "Example et al.: importance grows with depth"
    description = "a toy rule that ranks layers by their depth"
    citations = ("toy2026",)
    tags = ("toy-depth",)
    capabilities = frozenset({"streamable"})
    granularities = ("block", "attention", "mlp")
    needs_calibration = False
    options = ToyOptions

    def score(self, ctx, removed=(), candidates=None):
        n = ctx.num_units
        order = range(n - 1, -1, -1) if self.opts.reverse else range(n)
        return Scores(per_unit=[self.opts.scale * float(d) for d in order])


@contextmanager
def registered():
    with ExitStack() as stack:
        stack.enter_context(BIBLIOGRAPHY.registered(PAPER))
        stack.enter_context(METRICS.registered(ToyDepth))
        yield ToyDepth
