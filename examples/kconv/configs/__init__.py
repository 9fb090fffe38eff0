"""Configurations of the KConv example: ``default`` (minutes), ``paper``."""
