"""Generated RASP programs (issue 17, item 1): a seeded grammar of small RASP programs, each kept
only when tracr compiles it into a model whose structural circuit is worth discovering, shipped as
suite tasks `suite:gen-<seed>-<V>x<N>[-causal]` beside tracr's library programs
(harness.programs.library).

What the grammar draws (`generate(seed)`, deterministic: everything comes from
`random.Random(seed)`): a vocabulary of 3-10 tokens (integers 0..V-1, or letters a.. for about a
third of the programs), inputs of 4-12 tokens, and about a fifth compiled with a causal mask. The
program is a chain of 2-6 operations, each reading the previous one (so the composition is that
deep), plus side operations on the inputs that the chain reads too:

- `map[f](x)`: categorical Map with a named function (`MAPS`: x+k, max(x-k,0), x mod k, x>k, x<k,
  x==k, min(x,k), 2x, x//2, k-x, (x+k) mod m; on letters: rank, is_vowel, next letter);
- `num[f](x)`: numerical Map to 0/1 (x==k, x>k, x<k, parity) or to x itself;
- `seqmap[f](x, y)`: categorical SequenceMap of two SOps (`SEQMAPS`: x+y, x-y, |x-y|, max, min,
  x==y, x<y, (x+y) mod m);
- `width[P](keys, queries)`: SelectorWidth of a Select with predicate P (EQ, LT, LEQ, GT, GEQ,
  NEQ, TRUE);
- `mean[P](keys, queries, x)`: numerical Aggregate (mean) of a 0/1 numerical SOp, default 0;
- `gather(query, x)`: categorical Aggregate of x with Select(indices, query, EQ), where the query's
  values lie in 0..N-1, so exactly one key is selected at every position (what tracr's categorical
  Aggregate needs; the output is never None);
- `lin[a,b](x, y)`: numerical LinearSequenceMap a*x + b*y.

Causal programs use only selectors that never select a later key (keys = indices, queries =
indices or max(indices-k, 0), predicates EQ/LEQ/LT), so the causal mask changes nothing the
program computes. Numerical means feed only the output or a `lin` (tracr's value set of a mean is
not exact, so no MLP may read it). Every function is named, so the program's text
(`GeneratedProgram.text`, one `vK = op(...)` line per operation) is canonical; that text plus the
vocabulary and length is the compiled-weights cache key.

Selection (`select(n)`; `circuit-bench suite-seeds --select 48` re-derives the shipped
seeds and prints every rejection): seeds 0, 1, 2, ... are tried in order and a seed is kept when
(1) its program is not the same text as an earlier kept one and is at least 2 operations deep,
(2) tracr's validator finds nothing unsupported on sample inputs, (3) tracr compiles it, (4) its
structural circuit (harness.programs.structural_gt) has an attention head, an MLP and off-circuit
edges (`check_circuit` plus the MLP check here), (5) some corruption changes its output (the
task's data), by more than MIN_CHANGE on every kept row, (6) the compiled model computes what the
RASP program computes on the task's inputs, and (7) its graph has at most MAX_EDGES edges. Only
these structural criteria are used, never a discovery method's score. `GENERATED_SEEDS` holds the
first kept seeds; the tests re-run the selection on a prefix and check that the kept seeds and
the rejection reasons still hold.

Nothing is compiled at import: `harness.tasks.suite_tasks` (`register_generated()`,
`build_generated()`, the selection `select()`) compiles (cached) and registers the tasks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.programs.rasp_programs import ProgramSpec

SOURCE = ("derived from the compiled weights of a program drawn from the seeded RASP grammar "
          "(harness.programs.grammar) by harness.programs.structural_gt; no discovery run")
MAX_VALUES = 24  # most values a categorical SOp may take (its residual subspace; keeps d_model small)
MAX_PAIRS = 150  # most input pairs of a SequenceMap (its MLP's hidden width)
MAX_EDGES = 600  # most edges of a kept program's graph
MIN_CHANGE = 1e-3  # least output change of every kept corrupted row (the task keys numerical outputs
# to 6 decimals, so a compiled mean's ~1e-7 error can make two equal outputs "differ")
PREDICATES = ("EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE")
LETTERS = "abcdefghij"

# The first kept seeds of `select()` (circuit-bench suite-seeds --select 48).
GENERATED_SEEDS: tuple[int, ...] = (
    0, 2, 3, 4, 6, 7, 8, 10, 12, 13, 17, 18, 19, 20, 22, 24, 25, 26, 27, 28, 30, 31, 32, 33, 35, 36, 38, 39, 40, 41,
    42, 43, 45, 47, 48, 49, 50, 52, 56, 57, 58, 59, 60, 61, 62, 66, 67, 69)


# ---- named functions: the name alone defines the function (the text is the cache key) ---------

def map_fn(name: str):
    """The function of a `map`/`num` name, e.g. "add2" -> x+2, "rot1m5" -> (x+1) % 5."""
    import re

    m = re.fullmatch(r"([a-z]+?)(-?\d+)?(?:m(\d+))?", name)
    op, k, mod = m.group(1), int(m.group(2) or 0), int(m.group(3) or 0)
    table = {
        "add": lambda x: x + k, "sub": lambda x: max(x - k, 0), "mod": lambda x: x % k,
        "gt": lambda x: int(x > k), "lt": lambda x: int(x < k), "eq": lambda x: int(x == k),
        "min": lambda x: min(x, k), "dbl": lambda x: 2 * x, "half": lambda x: x // 2,
        "flip": lambda x: k - x, "rot": lambda x: (x + k) % mod, "parity": lambda x: x % 2,
        "id": lambda x: x, "rank": lambda x: LETTERS.index(x), "vowel": lambda x: int(x in "aeiou"),
        "next": lambda x: LETTERS[(LETTERS.index(x) + 1) % k],
    }
    return table[op]


def seqmap_fn(name: str):
    """The function of a `seqmap` name, e.g. "absdiff" -> |x-y|, "addm5" -> (x+y) % 5."""
    mod = int(name[4:]) if name.startswith("addm") else 0
    return {
        "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "absdiff": lambda x, y: abs(x - y),
        "max": max, "min": min, "eq": lambda x, y: int(x == y), "lt": lambda x, y: int(x < y),
    }.get(name) or (lambda x, y: (x + y) % mod)


# ---- the AST -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """One RASP operation (or an input). `args` index earlier nodes; `values` is the value set
    tracr infers (exact except for means, `exact=False`)."""

    op: str  # tokens, indices, map, num, seqmap, width, mean, gather, lin
    fn: str  # function / predicate name ("" for inputs and gather)
    args: tuple
    numerical: bool
    values: frozenset
    depth: int  # longest chain of operations from an input
    exact: bool = True

    def text(self) -> str:
        a = ", ".join(f"v{i}" for i in self.args)
        return f"{self.op}[{self.fn}]({a})" if self.fn else f"{self.op}({a})"


@dataclass(frozen=True)
class GeneratedProgram:
    """A program drawn by `generate(seed)`; `spec` compiles it (cached on `text`)."""

    seed: int
    vocab: tuple
    max_seq_len: int
    causal: bool
    nodes: tuple  # Node, inputs first; the last node is the output
    spec: ProgramSpec = field(compare=False, repr=False, default=None)

    @property
    def name(self) -> str:
        return f"gen-{self.seed}-{len(self.vocab)}x{self.max_seq_len}" + ("-causal" if self.causal else "")

    @property
    def task_name(self) -> str:
        return f"suite:{self.name}"

    @property
    def text(self) -> str:
        """One `vK = op[fn](args)` line per operation the output depends on (canonical)."""
        return "\n".join(f"v{i} = {self.nodes[i].text()}" for i in sorted(self.used()) if i > 1)

    def used(self) -> set:
        """Indices of the nodes the output depends on (itself included)."""
        return _ancestors(self.nodes, len(self.nodes) - 1)

    @property
    def depth(self) -> int:
        return self.nodes[-1].depth

    def build(self):
        """The RASP SOp (fresh objects each call; Maps are not merged, so each is its own MLP)."""
        from tracr.rasp import rasp

        out: list = []
        for n in self.nodes:
            a = [out[i] for i in n.args]
            if n.op == "tokens":
                e = rasp.tokens
            elif n.op == "indices":
                e = rasp.indices
            elif n.op == "map":
                e = rasp.categorical(rasp.Map(map_fn(n.fn), a[0], simplify=False))
            elif n.op == "num":
                e = rasp.numerical(rasp.Map(map_fn(n.fn), a[0], simplify=False))
            elif n.op == "seqmap":
                e = rasp.categorical(rasp.SequenceMap(seqmap_fn(n.fn), a[0], a[1]))
            elif n.op == "width":
                e = rasp.categorical(rasp.SelectorWidth(rasp.Select(a[0], a[1], rasp.Comparison[n.fn])))
            elif n.op == "mean":
                e = rasp.numerical(rasp.Aggregate(rasp.Select(a[0], a[1], rasp.Comparison[n.fn]), a[2], default=0))
            elif n.op == "gather":
                e = rasp.categorical(rasp.Aggregate(rasp.Select(out[1], a[0], rasp.Comparison.EQ), a[1]))
            elif n.op == "lin":
                fa, fb = (int(s) for s in n.fn.split(","))
                e = rasp.numerical(rasp.LinearSequenceMap(a[0], a[1], fa, fb))
            else:  # pragma: no cover
                raise ValueError(n.op)
            out.append(e if n.op in ("tokens", "indices") else e.named(f"v{len(out)}"))
        return out[-1]

    def kinds(self) -> set:
        """The operation kinds the output depends on (map, num, seqmap, width, mean, gather, lin)."""
        return {self.nodes[i].op for i in self.used()} - {"tokens", "indices"}

    def predicates(self) -> set:
        return {self.nodes[i].fn for i in self.used() if self.nodes[i].op in ("width", "mean")} | (
            {"EQ"} if "gather" in self.kinds() else set())


class _Drawer:
    """The grammar's state while drawing one program."""

    def __init__(self, seed: int):
        self.rng = r = random.Random(seed)
        self.V, self.N = r.randint(3, 10), r.randint(4, 12)
        self.letters = r.random() < 0.3
        self.causal = r.random() < 0.2
        self.vocab = tuple(LETTERS[: self.V]) if self.letters else tuple(range(self.V))
        self.nodes = [Node("tokens", "", (), False, frozenset(self.vocab), 0),
                      Node("indices", "", (), False, frozenset(range(self.N)), 0)]

    def add(self, op, fn, args, numerical, values, exact=True) -> int:
        depth = 1 + max(self.nodes[i].depth for i in args)
        self.nodes.append(Node(op, fn, tuple(args), numerical, frozenset(values), depth, exact))
        return len(self.nodes) - 1

    def ints(self, i) -> bool:
        n = self.nodes[i]
        return not n.numerical and all(isinstance(v, int) for v in n.values)

    def cats(self, like=None, max_depth=99) -> list:
        """Categorical nodes (of the same value type as `like`)."""
        out = []
        for i, n in enumerate(self.nodes):
            if n.numerical or n.depth > max_depth:
                continue
            if like is not None and self.ints(i) != self.ints(like):
                continue
            out.append(i)
        return out

    # -- operations; each returns the new node's index, or None when it does not apply to x --
    def map_(self, x):
        r, vals = self.rng, self.nodes[x].values
        if not self.ints(x):
            names = ["rank", "vowel", f"next{self.V}"]
        else:
            hi = max(vals)
            k = r.randint(1, max(1, hi))
            m = r.randint(2, max(2, self.N))
            names = [f"add{r.randint(1, 3)}", f"sub{r.randint(1, 2)}", f"mod{r.randint(2, 4)}", f"gt{k - 1}",
                     f"lt{k}", f"eq{k}", f"min{k}", "dbl", "half", f"flip{hi}", f"rot{r.randint(1, m - 1)}m{m}"]
        r.shuffle(names)
        for name in names:
            f = map_fn(name)
            if name.startswith("rot") and not all(0 <= v for v in vals):
                continue
            out = {f(v) for v in vals}
            if 2 <= len(out) <= MAX_VALUES:
                return self.add("map", name, [x], False, out)
        return None

    def num(self, x, binary=True):
        r, vals = self.rng, self.nodes[x].values
        if not self.ints(x):
            names = ["vowel"]
        else:
            k = r.choice(sorted(vals))
            names = [f"eq{k}", f"gt{k}", f"lt{k}", "parity"] + ([] if binary else ["id"])
        r.shuffle(names)
        for name in names:
            out = {map_fn(name)(v) for v in vals}
            if len(out) >= 2:
                return self.add("num", name, [x], True, out)
        return None

    def seqmap(self, x):
        r = self.rng
        if not self.ints(x):
            return None
        others = [j for j in self.cats(like=x) if j != x]
        if not others:
            return None
        y = r.choice(others)
        if len(self.nodes[x].values) * len(self.nodes[y].values) > MAX_PAIRS:
            return None
        names = ["add", "sub", "absdiff", "max", "min", "eq", "lt", f"addm{r.randint(2, self.N)}"]
        r.shuffle(names)
        a, b = (x, y) if r.random() < 0.5 else (y, x)
        for name in names:
            f = seqmap_fn(name)
            out = {f(u, v) for u in self.nodes[a].values for v in self.nodes[b].values}
            if 2 <= len(out) <= MAX_VALUES:
                return self.add("seqmap", name, [a, b], False, out)
        return None

    def causal_query(self):
        """indices, or max(indices-k, 0) (made here): a query no later key can match."""
        if self.rng.random() < 0.5:
            return 1
        k = self.rng.randint(1, 2)
        return self.add("map", f"sub{k}", [1], False, {max(v - k, 0) for v in range(self.N)})

    def select(self, x, pred_choices=PREDICATES):
        """(keys, queries, predicate) of a Select reading x (x is keys or queries)."""
        r = self.rng
        if self.causal:
            return 1, self.causal_query(), r.choice(("EQ", "LEQ", "LT"))
        others = self.cats(like=x)
        other = r.choice(others)
        pred = r.choice([p for p in pred_choices if p != "TRUE"])
        return (x, other, pred) if r.random() < 0.5 else (other, x, pred)

    def width(self, x):
        if self.causal:
            return None  # a causal width reads only indices: it may be a side input, not a chain step
        k, q, pred = self.select(x)
        return self.add("width", pred, [k, q], False, range(self.N + 1))

    def mean(self, x):
        """mean over a Select of a 0/1 numerical SOp: x is the averaged SOp (then any predicate,
        TRUE included) or x is read by the Select (averaging a new 0/1 side input)."""
        r = self.rng
        n = self.nodes[x]
        if n.numerical:
            if not (n.exact and n.values <= {0, 1}):
                return None
            if self.causal:
                k, q, pred = self.select(x)
            else:
                cat = r.choice(self.cats())
                k, q, pred = self.select(cat)
                if r.random() < 0.25:
                    pred = "TRUE"
            vals = {v / m for v in (0, 1) for m in range(1, self.N + 1)}
            return self.add("mean", pred, [k, q, x], True, vals, exact=False)
        if self.causal:
            return None
        src = self.num(r.choice([0, 1]) if r.random() < 0.7 else r.choice(self.cats(max_depth=n.depth - 1)))
        if src is None:
            return None
        k, q, pred = self.select(x)
        vals = {v / m for v in (0, 1) for m in range(1, self.N + 1)}
        return self.add("mean", pred, [k, q, src], True, vals, exact=False)

    def in_range(self, i) -> bool:
        return self.ints(i) and self.nodes[i].values <= set(range(self.N))

    def movable(self, i) -> bool:
        """Whether a head can move SOp i: tracr's assembler sizes every head's value space by its
        query/key space (here indices, N values), so more values fail to assemble."""
        return len(self.nodes[i].values) <= self.N

    def gather(self, x):
        """gather(query, x): x moved from the position the query names (exactly one key)."""
        r = self.rng
        if self.causal and self.movable(x):
            q = self.causal_query()
            if q == 1:
                q = self.add("map", "sub1", [1], False, {max(v - 1, 0) for v in range(self.N)})
            return self.add("gather", "", [q, x], False, self.nodes[x].values)
        if self.causal:
            return None
        if r.random() < 0.5 and self.in_range(x):  # x names the position; move another SOp
            srcs = [j for j in self.cats() if j != x and self.movable(j)]
            if srcs:
                src = r.choice(srcs)
                return self.add("gather", "", [x, src], False, self.nodes[src].values)
        if not self.movable(x):
            return None
        queries = [j for j in self.cats() if self.in_range(j) and j not in (1, x)]
        if not queries or r.random() < 0.5:
            m = self.N
            name = r.choice([f"flip{m - 1}", f"rot{r.randint(1, m - 1)}m{m}"])
            queries = [self.add("map", name, [1], False, {map_fn(name)(v) for v in range(m)})]
        return self.add("gather", "", [r.choice(queries), x], False, self.nodes[x].values)

    def lin(self, x):
        r = self.rng
        others = [j for j, n in enumerate(self.nodes) if n.numerical and j != x]
        if not others:
            y = self.num(r.choice(self.cats()), binary=False)
            if y is None:
                return None
            others = [y]
        fa, fb = r.choice([(1, 1), (1, -1), (2, -1), (1, 2)])
        return self.add("lin", f"{fa},{fb}", [x, r.choice(others)], True, {0}, exact=False)

    def side(self):
        """An extra operation on the inputs that later steps may read."""
        r = self.rng
        if self.causal:
            if r.random() < 0.5:
                return self.add("width", "LEQ", [1, 1], False, range(self.N + 1))
            return self.map_(0)
        x = r.choice([0, 1])
        return r.choice([self.map_, self.width, self.map_])(x)


def _ancestors(nodes, i) -> set:
    seen, todo = set(), [i]
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(nodes[j].args)
    return seen


def generate(seed: int) -> GeneratedProgram:
    """The program of `seed` (deterministic; cheap: nothing is compiled)."""
    d = _Drawer(seed)
    r = d.rng
    depth = r.randint(2, 6)
    cur = 0 if d.causal else r.choice([0, 0, 1])  # causal selects read only indices: start from tokens
    for step in range(2 * depth):
        left = depth - d.nodes[cur].depth  # steps still to draw, this one included
        if left <= 0:
            break
        if step and r.random() < 0.4:
            d.side()
        n = d.nodes[cur]
        attends = {d.nodes[i].op for i in _ancestors(d.nodes, cur)} & {"width", "mean", "gather"}
        if n.numerical:
            ops = [d.lin] + ([d.mean] if n.exact and n.values <= {0, 1} else [])
        elif left == 1 and not attends:
            ops = [d.width, d.gather, d.mean]  # every program has an attention layer
        elif left == 1:
            ops = [d.map_, d.seqmap, d.width, d.gather, d.mean, d.mean]
        elif left == 2:
            ops = [d.map_, d.seqmap, d.width, d.gather, d.num]
        else:
            ops = [d.map_, d.seqmap, d.width, d.gather, d.gather]
        r.shuffle(ops)
        for op in ops:
            new = op(cur)
            if new is not None:
                cur = new
                break
        else:
            break
    nodes = tuple(d.nodes[: cur + 1])
    p = GeneratedProgram(seed, d.vocab, d.N, d.causal, nodes)

    def build():
        return p.build()

    build.cache_source = (f"harness.programs.grammar v1\n{p.text}\nvocab={list(map(str, p.vocab))} "
                          f"max_seq_len={p.max_seq_len} causal={p.causal}")
    spec = ProgramSpec(p.name, build, p.vocab, max_seq_len=p.max_seq_len, causal=p.causal)
    object.__setattr__(p, "spec", spec)
    return p


# ---- selection ---------------------------------------------------------------------------------

REASONS = {  # short reason -> what a ProgramError message says (first match wins)
    "duplicate": "the same program text as an earlier kept seed",
    "too shallow": "a composition less than 2 operations deep",
    "tracr validator": "tracr's validator finds an unsupported operation",
    "tracr cannot compile": "tracr cannot compile",
    "no edges": "has no edges",
    "no off-circuit edges": "no off-circuit edges",
    "no attention head": "no attention head",
    "no MLP": "no MLP",
    "constant output": "the same output on every input",
    "noise": "a corrupted row changes the output only by the compiled model's numerical error",
    "RASP mismatch": "the compiled model disagrees with the RASP program",
    "too many edges": "edges, over MAX_EDGES",
}


def reason_of(message: str) -> str:
    """The short reason (a key of REASONS) a rejection message gives."""
    for k, text in REASONS.items():
        if text in message:
            return k
    return "other"


def _sample_inputs(p: GeneratedProgram, n: int = 8) -> list:
    r = random.Random(p.seed)
    return [[r.choice(p.vocab) for _ in range(p.max_seq_len)] for _ in range(n)]


def precheck(p: GeneratedProgram) -> None:
    """Checks before compiling: tracr's static and dynamic validator on sample inputs."""
    from tracr.compiler import validating

    from harness.programs.user_program import ProgramError

    if p.depth < 2:
        raise ProgramError(f"{p.name}: {REASONS['too shallow']} (depth {p.depth})")
    program = p.spec.build()
    for xs in _sample_inputs(p):
        bad = validating.validate(program, xs)
        if bad:
            raise ProgramError(f"{p.name}: {REASONS['tracr validator']}: {bad[0].reason}")


# ---- the shipped programs ----------------------------------------------------------------------

# Shipped programs whose ground truth matched to zero ablation ("structural-zero", or
# "structural" where they agree) exact edge patching does not rank with AUC 1.0 under the run's
# tie floor, and why (checked by tests/test_grammar_programs.py; docs/suite.md#exceptions).
INERT = ("ground-truth edges that no single zeroing changes any output through on the task's inputs: a later "
         "operation saturates (e.g. min(v0, v5) is v0 whenever v5 >= v0, or a SelectorWidth's count is the same "
         "for every query the data gives), so they tie with off-circuit edges at the floor; no off-circuit edge scores")
BOS_POSITION = ("off-circuit embed -> q/k edges carrying only an Aggregate's `one`/BOS default term score: every "
                "query past BOS matches a key, but at BOS's own position none does, so zeroing the term changes what "
                "the head writes there, and a later head reads position 0 as a key")
ZERO_ABLATION_EXCEPTIONS: dict[str, str] = {
    **{n: INERT for n in ("gen-28-4x6", "gen-47-8x5", "gen-56-3x11", "gen-67-4x5")},
    **{n: BOS_POSITION for n in ("gen-0-9x10", "gen-4-6x8", "gen-22-5x7", "gen-25-9x4", "gen-62-5x5")},
}


# name -> GeneratedProgram of every shipped seed: drawing the programs takes ~15 ms and compiles
# nothing (harness.tasks.suite_tasks.register_generated compiles).
GENERATED: dict[str, GeneratedProgram] = {p.name: p for p in map(generate, GENERATED_SEEDS)}


def describe(name: str) -> dict:
    """Statistics of a shipped program: RASP operations, composition depth, operation kinds,
    predicates, and (compiling it, cached) its compiled layers, graph and ground-truth sizes."""
    from harness.core.graph import Graph
    from harness.programs.structural_gt import edge_mask
    from harness.programs.tracr_models import load_tracr

    p = GENERATED[name.removeprefix("suite:")]
    m = load_tracr(p.spec)
    g = Graph(m.weights.cfg)
    return {"name": p.name, "seed": p.seed, "vocab": len(p.vocab), "max_seq_len": p.max_seq_len, "causal": p.causal,
            "n_ops": len(p.used()) - len({0, 1} & p.used()), "depth": p.depth, "kinds": sorted(p.kinds()),
            "predicates": sorted(p.predicates()), "n_layers": m.weights.cfg.n_layers, "n_heads": m.weights.cfg.n_heads,
            "d_model": m.weights.cfg.d_model, "n_edges": g.n_edges,
            "gt_edges": int(edge_mask(m, "structural", g).sum()),
            "text": p.text}

