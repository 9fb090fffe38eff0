"""Configurations of the ResNet/GKPD example: ``default`` (minutes)."""
