"""Pure step functions of the data path: locate, pre-stage, score, keep plan (see docs/architecture.md)."""
