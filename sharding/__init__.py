"""Videos -> WebDataset tar shards with a manifest (bottom floor: no torch, no DALI)."""

__version__ = "0.1.0"
