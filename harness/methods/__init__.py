"""Discovery methods, registered by name (see `registry`)."""
from harness.methods.registry import METHODS, CircuitFamily, MethodSpec, all_methods, get_method, register

__all__ = ["METHODS", "CircuitFamily", "MethodSpec", "all_methods", "get_method", "register"]
