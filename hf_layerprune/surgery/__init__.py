"""The surgery part of hf-layerprune (docs/architecture.md, "Parts")."""
