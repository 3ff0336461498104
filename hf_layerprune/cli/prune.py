"""`hf-layerprune prune` (placeholder until the foundation lands)."""
