"""The package version, recorded in every output's metadata."""

__version__ = "0.1.0"
