"""Data stage: fetch example datasets and preprocess interaction logs on Ray Data (no torch)."""
