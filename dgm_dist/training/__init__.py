"""The per-worker loop, schedules, checkpoints and the Ray Train launcher."""
