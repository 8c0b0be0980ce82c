"""Profiling: latency, throughput, complexity and accuracy of every model on every backend."""
