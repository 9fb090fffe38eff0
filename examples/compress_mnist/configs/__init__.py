"""Configurations of the compress_mnist example."""
