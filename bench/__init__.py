"""Benchmarks: training throughput against PyTorch, and the input pipeline's images/s."""
