"""The model card: rendered from a typed `Report` alone (no model, no Hub, no torch), with plots beside it.

- ``view``: everything the template shows, built from the report (evaluation sections in ``evaluation``, which
  reads the comparison the evaluation stage stored; its arithmetic for old reports is results.py);
- ``formatting``: escaping (``md``, ``code``, ``codeblock``) and numbers;
- ``citations``: method descriptions, tags and papers from the metric and healer registries, and the
  bibliography (``bibliography.json``, keyed by citation key);
- ``metadata``: the YAML header (huggingface_hub ``ModelCardData``);
- ``render``: the text, and ``README.md`` with its plots. It reads no file and looks nothing up: the composition
  (finish.py) reads ``layerprune.json`` with ``Report.from_dict`` and puts the base model's card, looked up once
  (hub.find_base_card), in the report's ``base_card``.

**base_model_relation.** The Hub accepts ``adapter``, ``merge``, ``quantized`` and ``finetune`` (and infers one when
the key is absent). A pruned model is none of the first three, so every card says ``finetune``: for a healed model
the weights changed; for an unhealed cut the architecture changed (the weights are a subset of the base's), and
``finetune`` is also what the Hub would infer. The body states exactly what was done.

**License.** Never assumed. It is copied (``license``, ``license_name``, ``license_link``) from the base model's
card: the README.md of a local base directory, the Hub cache, or the Hub API (``model_info(expand=cardData)``),
or a card file given with ``base_card=``, and kept in the report's ``base_card`` section so that later re-renders
work offline. When no card can be read, the license is left out and the card says so.
"""

from hf_layerprune.card.citations import BIBLIOGRAPHY, Citation, citation_keys, citations as _citations
from hf_layerprune.card.formatting import code, codeblock, fmt_layers, hub_id, md, model_link
from hf_layerprune.card.metadata import _tags, card_data
from hf_layerprune.card.render import PLOT_FILES, card_text, make_plots, render_card
from hf_layerprune.card.view import build_context

__all__ = [
    "BIBLIOGRAPHY",
    "Citation",
    "PLOT_FILES",
    "_citations",
    "_tags",
    "build_context",
    "card_data",
    "card_text",
    "citation_keys",
    "code",
    "codeblock",
    "fmt_layers",
    "hub_id",
    "make_plots",
    "md",
    "model_link",
    "render_card",
]
