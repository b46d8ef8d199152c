"""circuit-bench: a benchmark harness for gradient-based circuit discovery."""

__version__ = "0.1.0"
