"""SQL: the source of truth for users, jobs, runs, metrics and model versions."""
