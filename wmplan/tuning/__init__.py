"""Tuning: hyperparameter studies over planner options (depends on jobs, storage, platform)."""
