"""Scheduled operations: the slot arithmetic, the single-sender Beat scheduler and the jobs."""
