"""Discovery methods, one module each, registered by name (see `registry`)."""
from harness.methods.registry import METHODS, CircuitFamily, MethodSpec, Timing, all_methods, get_method, register

__all__ = ["METHODS", "CircuitFamily", "MethodSpec", "Timing", "all_methods", "get_method", "register"]
