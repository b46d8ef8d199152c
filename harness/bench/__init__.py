"""Timing: what every method costs next to one plain forward+backward and to activation patching (`circuit-bench bench`, benchmarks/)."""
