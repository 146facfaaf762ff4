"""Training and zero-shot evaluation (top floor below benchmarks)."""
