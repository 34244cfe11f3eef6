"""vramq: a shared-GPU job scheduler (API, scheduler and database)."""
