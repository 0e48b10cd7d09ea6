"""Utilities: schedules, logging set-up, rank-aware helpers."""
