"""Parsing of memory sizes as people write them (MiB everywhere inside vramq)."""

import re

_UNITS_MB = {"mib": 1, "mb": 1, "m": 1, "gib": 1024, "gb": 1024, "g": 1024, "tib": 1024**2, "tb": 1024**2}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_GPU_SPEC = re.compile(r"^\s*(\d+)\s*x\s*(.+)$")


def parse_size_mb(text: str) -> int:
    """'24GiB' -> 24576; a bare number is MiB."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS_MB and unit != "":
        raise ValueError(f"not a memory size: {text!r} (try 24GiB or 8000MiB)")
    size = int(float(match.group(1)) * _UNITS_MB.get(unit, 1))
    if size <= 0:
        raise ValueError(f"memory size must be positive: {text!r}")
    return size


def parse_gpu_spec(spec: str) -> list[int]:
    """'2x24GiB,1x8GiB' -> [24576, 24576, 8192]."""
    sizes: list[int] = []
    for part in spec.split(","):
        match = _GPU_SPEC.match(part)
        count, size = (int(match.group(1)), match.group(2)) if match else (1, part)
        if count < 1:
            raise ValueError(f"GPU count must be at least 1: {part!r}")
        sizes += [parse_size_mb(size)] * count
    return sizes
