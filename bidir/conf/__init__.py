"""Hydra configuration files for bidir.train."""
