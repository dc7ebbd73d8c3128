"""Backbones of the study, one registry per framework (only the selected one is imported)."""
