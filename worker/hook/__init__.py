"""Files put on a job's PYTHONPATH. Standard library only: they run in the researcher's environment."""

from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent
