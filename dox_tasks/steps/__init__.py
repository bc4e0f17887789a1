"""The five workflow steps as plain Python."""
