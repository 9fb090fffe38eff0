"""Configurations of the KDL MNIST example: ``default`` (minutes) and ``paper``."""
