"""Experiments of the paper, each runnable as ``mosaics reproduce NAME``."""
