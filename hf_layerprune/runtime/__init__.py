"""The runtime part of hf-layerprune (docs/architecture.md, "Parts")."""
