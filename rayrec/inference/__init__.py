"""Offline inference on Ray Data: batch top-k over a bundle's users. Builds on models, never on training or serving."""
