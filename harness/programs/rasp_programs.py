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


# ---- tracr analogues of ACDC's four pretrained-model tasks (docs/tracr.md#rasp-analogues) ------
# All four compile causally: every categorical Aggregate then selects at most one key at every
# position (the causal mask removes later matches), which tracr needs for exact one-hot moves.
# Builders read token *kinds* from spelling (names capitalised, years digits, parameters
# alphabetic) rather than from size-dependent sets, so sizes change only the vocabulary and
# max_seq_len, both part of the compiled-weights cache key.


def induction_program():
    """Previous-token head, then an induction head that attends to the position whose
    previous token equals the current token and copies the token there (match-and-copy)."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    prev = lib.shift_by(1, rasp.tokens).named("prev_token")
    match = rasp.Select(prev, rasp.tokens, lambda k, q: k is not None and k == q)
    return rasp.Aggregate(match, rasp.tokens).named("induction")


def ioi_program():
    """Duplicate-name head (+ its counting MLP), S-inhibition head (every position from S2 on
    receives the repeated name S), name mover (attends to the name that is not S: IO)."""
    from tracr.rasp import rasp

    def is_name(x):
        return x is not None and x[:1].isupper()

    dup = rasp.Select(rasp.tokens, rasp.tokens, lambda k, q: is_name(q) and k == q)
    count = rasp.SelectorWidth(dup).named("name_count")
    s_inhibit = rasp.Select(count, rasp.tokens, lambda k, q: k is not None and k >= 2)
    subject = rasp.Aggregate(s_inhibit, rasp.tokens).named("subject")
    mover = rasp.Select(rasp.tokens, subject, lambda k, q: q is not None and is_name(k) and k != q)
    return rasp.Aggregate(mover, rasp.tokens).named("ioi")


def greaterthan_program():
    """A head moves the year YY to every later position; an MLP maps it to the smallest year
    greater than it (the class "YY+1"; "-" for a non-year)."""
    from tracr.rasp import rasp

    def is_year(x):
        return x is not None and x.isdigit()

    find = rasp.Select(rasp.tokens, rasp.tokens, lambda k, q: is_year(k))
    year = rasp.Aggregate(find, rasp.tokens).named("year")
    return rasp.Map(lambda y: f"{int(y) + 1:02d}" if is_year(y) else "-", year).named("next_year")


def docstring_program():
    """Previous-token head; an MLP marks each signature parameter with the parameter before it;
    the docstring head, from the final ":param" (whose previous token is the last documented
    parameter), attends to the parameter that follows it in the signature and copies it."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    def is_param(x):
        return x is not None and x.isalpha()

    prev = lib.shift_by(1, rasp.tokens).named("prev_token")
    after = rasp.SequenceMap(lambda p, t: p if is_param(p) and is_param(t) else "-", prev, rasp.tokens)
    after = after.named("param_after")
    find = rasp.Select(after, prev, lambda k, q: is_param(q) and k == q)
    return rasp.Aggregate(find, rasp.tokens).named("docstring")


def _words(base: list, n: int, what: str) -> list:
    if n > len(base):
        raise ValueError(f"at most {len(base)} {what} are available, asked for {n}")
    return list(base[:n])


LETTERS = [chr(ord("a") + i) for i in range(26)]
NAMES = ("Ann Bob Cal Dan Eve Fay Gus Hal Ivy Jon Kim Lea Max Ned Ola Pam Quin Rex Sam Tom Uma Val "
         "Wes Xia Yan Zoe Abe Bea Cid Dee Eli Flo Gil Hua Ida Jay Kai Liv Moe Nia").split()
PLACES = "store garden school house office station park bank".split()
OBJECTS = "ring bone book drink snack card cake ball".split()
NOUNS = "war reign trip feud siege voyage strike famine drought treaty boom truce".split()
PARAMS = ("data name file value key path size mode item text user node line port host flag code date "
          "time page sep query token limit count index level label image shape scale model state").split()

# The prompt layouts (model inputs after BOS); {X} marks a slot filled per example.
IOI_TEMPLATE = ("then", "{A}", "and", "{B}", "went", "to", "the", "{PLACE}", "{S}", "gave", "a", "{OBJECT}", "to")
GREATERTHAN_TEMPLATE = ("the", "{NOUN}", "lasted", "from", "{YY}", "to")

# Default sizes (the offline benchmark); tests build smaller ones through `analogue_spec`.
ANALOGUE_SIZES: dict[str, dict] = {
    "tracr-induction": {"n_tokens": 12, "half_len": 6},
    "tracr-ioi": {"n_names": 8, "n_places": 3, "n_objects": 3},
    "tracr-greaterthan": {"n_years": 24, "n_nouns": 4},
    "tracr-docstring": {"n_names": 14, "n_args": 6, "n_doc": 2},
}


def analogue_words(name: str, **sizes) -> dict:
    """The token groups an analogue's prompts draw from, at the given sizes (defaults filled in)."""
    if name not in ANALOGUE_SIZES:
        raise KeyError(f"unknown analogue {name!r}; known: {', '.join(ANALOGUE_SIZES)}")
    unknown = set(sizes) - set(ANALOGUE_SIZES[name])
    if unknown:
        raise TypeError(f"{name} has no size(s) {sorted(unknown)}; sizes: {', '.join(ANALOGUE_SIZES[name])}")
    s = {**ANALOGUE_SIZES[name], **sizes}
    if name == "tracr-induction":
        if not 2 <= s["half_len"] <= s["n_tokens"]:
            raise ValueError("tracr-induction needs 2 <= half_len <= n_tokens (the repeated tokens are distinct)")
        return {"sizes": s, "tokens": _words(LETTERS, s["n_tokens"], "tokens"), "max_seq_len": 2 * s["half_len"]}
    if name == "tracr-ioi":
        if s["n_names"] < 5:
            raise ValueError("tracr-ioi needs n_names >= 5 (IO, S and three fresh ABC names)")
        w = {"names": _words(NAMES, s["n_names"], "names"), "places": _words(PLACES, s["n_places"], "places"),
             "objects": _words(OBJECTS, s["n_objects"], "objects")}
        fixed = [t for t in IOI_TEMPLATE if not t.startswith("{")]
        return {"sizes": s, **w, "fixed": fixed, "max_seq_len": len(IOI_TEMPLATE)}
    if name == "tracr-greaterthan":
        if not 2 <= s["n_years"] <= 97:
            raise ValueError("tracr-greaterthan needs 2 <= n_years <= 97 (years 02..98, '01' is the corruption)")
        years = [f"{y:02d}" for y in range(2, 2 + s["n_years"])]
        fixed = [t for t in GREATERTHAN_TEMPLATE if not t.startswith("{")]
        return {"sizes": s, "years": years, "nouns": _words(NOUNS, s["n_nouns"], "nouns"), "fixed": fixed,
                "max_seq_len": len(GREATERTHAN_TEMPLATE)}
    # tracr-docstring: ["def(", a_1..a_n, "):", ":param", m_1, ..., ":param", m_k, ":param"]
    if s["n_args"] < s["n_doc"] + 1 or s["n_doc"] < 1:
        raise ValueError("tracr-docstring needs n_doc >= 1 and n_args >= n_doc + 1")
    if s["n_names"] < s["n_args"] + 2 * s["n_doc"] + 1:
        raise ValueError("tracr-docstring needs n_names >= n_args + 2*n_doc + 1 (random_random renames)")
    return {"sizes": s, "params": _words(PARAMS, s["n_names"], "parameter names"), "fixed": ["def(", "):", ":param"],
            "max_seq_len": s["n_args"] + 2 * s["n_doc"] + 3}


_ANALOGUE_BUILDERS = {
    "tracr-induction": induction_program,
    "tracr-ioi": ioi_program,
    "tracr-greaterthan": greaterthan_program,
    "tracr-docstring": docstring_program,
}


def analogue_spec(name: str, **sizes) -> ProgramSpec:
    """The ProgramSpec of an analogue at the given sizes (e.g. `analogue_spec("tracr-ioi",
    n_names=6)`); unspecified sizes take their defaults. Compiled causally."""
    w = analogue_words(name, **sizes)
    groups = [v for k, v in w.items() if isinstance(v, list)]
    vocab = tuple(sorted({t for g in groups for t in g}))
    if name == "tracr-greaterthan":
        vocab = tuple(sorted(set(vocab) | {"01"}))  # the corruption's year
    return ProgramSpec(name, _ANALOGUE_BUILDERS[name], vocab, max_seq_len=w["max_seq_len"], causal=True)


PROGRAMS.update({name: analogue_spec(name) for name in _ANALOGUE_BUILDERS})
