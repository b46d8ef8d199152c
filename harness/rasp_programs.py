"""RASP programs compiled at run time into the tracr models the tasks use.

Each builder returns a fresh program; labels come from tracr's global id counter, so
`compile_program` resets it first to keep the residual layout reproducible. The source of each
builder is part of the compiled-weights cache key, so editing a program recompiles it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def reverse_program():
    """ACDC's tracr-reverse (the example of the tracr README): reverse the input sequence.

    length = SelectorWidth(Select(tokens, tokens, TRUE)); opp = length - indices - 1;
    reverse = Aggregate(Select(indices, opp, EQ), tokens).
    """
    from tracr.rasp import rasp

    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE))
    opp_index = length - rasp.indices - 1
    flip = rasp.Select(rasp.indices, opp_index, rasp.Comparison.EQ)
    return rasp.Aggregate(flip, rasp.tokens)


def xproportion_program():
    """ACDC's tracr-proportion: at each position, the fraction of "x" tokens so far
    (tracr's `lib.make_frac_prevs(tokens == "x")`)."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib.make_frac_prevs(rasp.tokens == "x")


@dataclass(frozen=True)
class ProgramSpec:
    """A program and the compiler settings that, together, define a compiled model."""

    name: str
    build: Callable
    vocab: tuple
    max_seq_len: int
    causal: bool = False
    compiler_bos: str = "BOS"
    compiler_pad: str = "compiler_pad"
    mlp_exactness: int = 100


PROGRAMS: dict[str, ProgramSpec] = {
    "tracr-reverse": ProgramSpec("tracr-reverse", reverse_program, (1, 2, 3), max_seq_len=5),
    "tracr-xproportion": ProgramSpec("tracr-xproportion", xproportion_program, ("w", "x", "y", "z"), max_seq_len=5),
}
