"""Overwatch: the operator console for esper_engine."""

# The one place the version is written: pyproject.toml reads it (tool.setuptools.dynamic), and
# `overwatch --version` prints the installed distribution's, falling back to this one.
__version__ = "0.1.0"
