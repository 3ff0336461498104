"""The model card: rendered from ``layerprune.json`` alone (no model needed), with plots beside it.

- ``view``: everything the template shows, built from the report (evaluation sections in ``evaluation``, which
  reads the comparison the evaluation stage stored);
- ``formatting``: escaping (``md``, ``code``, ``codeblock``) and numbers;
- ``citations``: method descriptions, tags and papers from the metric and healer registries, and the
  bibliography (``bibliography.json``, keyed by citation key);
- ``metadata``: the YAML header (huggingface_hub ``ModelCardData``);
- ``render``: the text, and ``README.md`` with its plots (never changing ``layerprune.json``; ``record_base_card``
  is the separate step that remembers the license there). The base card lookup itself is in hub.py.

**base_model_relation.** The Hub accepts ``adapter``, ``merge``, ``quantized`` and ``finetune`` (and infers one when
the key is absent). A pruned model is none of the first three, so every card says ``finetune``: for a healed model
the weights changed; for an unhealed cut the architecture changed (the weights are a subset of the base's), and
``finetune`` is also what the Hub would infer. The body states exactly what was done.

**License.** Never assumed. It is copied (``license``, ``license_name``, ``license_link``) from the base model's
card: the README.md of a local base directory, the Hub cache, or the Hub API (``model_info(expand=cardData)``),
or a card file given with ``base_card=``. ``record_base_card`` remembers it in the report's ``base_card`` section
so that later re-renders work offline. When no card can be read, the license is left out and the card says so.
"""

from hf_layerprune.card.citations import BIBLIOGRAPHY, Citation, citation_keys, citations as _citations
from hf_layerprune.card.formatting import code, codeblock, fmt_layers, hub_id, md, model_link
from hf_layerprune.card.metadata import _tags, card_data
from hf_layerprune.card.render import PLOT_FILES, base_card_info, card_text, make_plots, record_base_card, render_card
from hf_layerprune.card.view import build_context
from hf_layerprune.hub import CARD_FILENAME, find_base_card, license_from_card_file

__all__ = [
    "BIBLIOGRAPHY",
    "CARD_FILENAME",
    "Citation",
    "PLOT_FILES",
    "_citations",
    "_tags",
    "base_card_info",
    "build_context",
    "card_data",
    "card_text",
    "citation_keys",
    "code",
    "codeblock",
    "find_base_card",
    "fmt_layers",
    "hub_id",
    "license_from_card_file",
    "make_plots",
    "md",
    "model_link",
    "record_base_card",
    "render_card",
]
