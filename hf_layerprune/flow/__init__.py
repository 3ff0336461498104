"""The flow part of hf-layerprune (docs/architecture.md, "Parts")."""
