"""Corral agent: runs containers on one host and reports to the control plane."""

__version__ = "0.1.0"
