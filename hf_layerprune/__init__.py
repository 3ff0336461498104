"""hf-layerprune: make Hugging Face causal LMs shallower, heal them, evaluate them and publish them."""

__version__ = "0.1.0"
