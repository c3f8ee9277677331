"""rayrec: Transformer sequential recommenders trained on Ray Train and served with Ray Serve."""

__version__ = "0.1.0"
