"""Integrations with the tools users already run (lmms-eval)."""
