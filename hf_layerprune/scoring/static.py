"""Static metrics: one forward pass over the calibration set, read from residual-stream similarities.

All three come from the same ``ResidualStats`` (Gram matrices of the hooked residual points; see capture.py),
so `analyze --metric angular,bi,cosine` costs one pass. Point ``l`` is the input of layer ``l``; point ``L`` is
the last layer's output before the final norm (papers.md caveat: never the post-norm ``hidden_states[-1]``).
"""

from __future__ import annotations

from hf_layerprune.scoring.base import Metric, Scores, ScoringContext, register


def _layer_point(ctx: ScoringContext, layer: int) -> int:
    return 2 * layer if ctx.sublayers else layer


@register
class Angular(Metric):
    """Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers" (arXiv 2403.17887).

    d(ℓ, ℓ+n) = (1/π)·arccos(cos(x_T^ℓ, x_T^{ℓ+n})) between the *inputs* of layers ℓ and ℓ+n at the last token
    T, averaged over samples; the block ℓ..ℓ+n−1 with the smallest distance is removed. One pass gives the
    curve for every n. Lower = less important. Block granularity only (it compares block inputs).
    """

    name = "angular"
    summary = "Gromov et al.: angular distance between the inputs of layers l and l+n at the last token"
    description = "angular distance between a block's input and output on the last token"
    citations = ('gromov2024',)
    tags = ('angular-distance',)
    capabilities = frozenset({'streamable'})
    default_selection = "contiguous"

    def score(self, ctx, removed=(), candidates=None):
        distance = ctx.stats(removed).angular_mean
        return Scores(blocks=_blocks(ctx, distance, max_n=1 if removed else None))


@register
class BlockInfluence(Metric):
    """ShortGPT, Men et al. 2024 (arXiv 2403.03853): Block Influence BI_ℓ = 1 − mean over all tokens of
    cos(input of ℓ, output of ℓ). Sub-layers as in Siddiqui et al. 2024: the attention unit compares the layer
    input with input + attention update, the MLP unit that point with the layer output. Lower = less important.
    """

    name = "bi"
    summary = "ShortGPT block influence: 1 - mean cos(input, output) over all tokens"
    description = 'Block Influence, 1 − cosine(input, output) over all tokens'
    citations = ('shortgpt',)
    tags = ('block-influence',)
    capabilities = frozenset({'streamable'})
    granularities = ("block", "attention", "mlp")

    def score(self, ctx, removed=(), candidates=None):
        cos = ctx.stats(removed).cos_mean
        out = []
        for layer in range(ctx.num_units):
            a = _layer_point(ctx, layer)
            if ctx.granularity == "block":
                i, j = a, _layer_point(ctx, layer + 1)
            elif ctx.granularity == "attention":
                i, j = a, a + 1
            else:
                i, j = a + 1, a + 2
            out.append(None if layer in removed else float(1 - cos[i, j]))
        return Scores(per_unit=out)


@register
class Cosine(Metric):
    """LLM-Streamline, Chen et al. 2024 (arXiv 2403.19135): mean over all tokens of cos(input of block,
    output of block) for every contiguous block; the most similar block (argmax) is the one to cut.
    (Streamline replaces n = k+1 layers by one trained layer; here the block of n layers is removed.) Higher
    similarity = less important. Block granularity only."""

    name = "cosine"
    summary = "LLM-Streamline: mean cos(block input, block output) over all tokens, contiguous blocks"
    description = "cosine similarity between a block's input and output"
    citations = ('streamline',)
    tags = ('llm-streamline',)
    capabilities = frozenset({'streamable'})
    default_selection = "contiguous"
    higher_is_more_important = False

    def score(self, ctx, removed=(), candidates=None):
        cos = ctx.stats(removed).cos_mean
        return Scores(blocks=_blocks(ctx, cos, max_n=1 if removed else None))


def _blocks(ctx: ScoringContext, matrix, max_n: int | None = None) -> dict[int, list[float]]:
    """{n: [matrix[point(s), point(s+n)] for every start s]} for n = 1..L-1 (or 1..max_n)."""
    num = ctx.num_units
    last = max_n or num - 1
    return {
        n: [float(matrix[_layer_point(ctx, s), _layer_point(ctx, s + n)]) for s in range(num - n + 1)]
        for n in range(1, last + 1)
    }
