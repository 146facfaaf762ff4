"""DALI graphs that turn the shards into model-ready clips (reads manifests; no torch training code)."""
