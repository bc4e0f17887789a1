"""Workflow definitions: YAML in ``workflow_defs/``, checked like code, compiled to canvas."""

from .loader import Definition, load_all, load_file, validate_path

__all__ = ["Definition", "load_all", "load_file", "validate_path"]
