"""Throughput benchmarks (top floor)."""
