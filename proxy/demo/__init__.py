"""Simulated old and new platforms for the demo, the tests and the benchmarks."""
