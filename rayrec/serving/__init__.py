"""Serving stage: a Ray Serve application that loads a bundle and serves HTTP requests."""
