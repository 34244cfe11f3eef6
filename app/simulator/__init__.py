"""A trace-driven simulator: replays a workload through the same policy code the live scheduler runs."""
