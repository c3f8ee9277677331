"""Model stage: plain PyTorch sequence models, scoring and the serving bundle format (no Ray)."""
