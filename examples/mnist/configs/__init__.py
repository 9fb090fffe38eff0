"""Configurations of the MNIST example: ``default`` (minutes) and ``paper``."""
