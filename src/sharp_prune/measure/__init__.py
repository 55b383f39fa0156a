"""Measuring what pruning saves: analytic FLOPs, prefill time, memory, and the speed benchmark."""
