"""The four tracr analogues: compiled models agree with RASP, data are seeded and well formed,
the structural ground truth is causally exact under the tasks' own corruptions (with an
explicit, explained list of edges resample ablation cannot see), sizes are a parameter, and
every registered method scores every edge."""
from __future__ import annotations

import itertools

import pytest
import torch

from harness.core.engine import Engine
from harness.methods import all_methods
from harness.methods.registry import CircuitFamily
from harness.programs.structural_gt import short_edge
from harness.tasks import TASKS, get_task
from harness.tasks.tracr_analogues import ANALOGUES

NAMES = [c.name for c in ANALOGUES]

EMB, POS = "hook_embed[:]", "hook_pos_embed[:]"


def inp(L, x):
    return f"blocks.{L}.hook_{x}_input[:, :, 0]"


def direct(L, x):
    return (inp(L, x), f"blocks.{L}.attn.hook_{x}[:, :, 0]")


POSITIONS = ("positions are identical in the clean and an unscrambled corrupted run (the default resample "
             "source permutes hook_pos_embed as ACDC's tracr runs do; `caches['permuted']` below)")
CONSTANT_QK = "the predicate ignores the query, so the QK block is constant over it (refinement (a) drops it)"
KIND = ("the corruption keeps the token kind at every position (a year in the year slot, parameters in "
        "the parameter slots) and the receiver reads only the kind")
PREV_HEAD = {(POS, inp(0, "q")): POSITIONS, (POS, inp(0, "k")): POSITIONS, direct(0, "q"): POSITIONS, direct(0, "k"): POSITIONS}
# GT edges whose single patch under the task's resample ablation leaves the scored outputs
# unchanged, with why. Each is shown to matter under zero ablation (and positional ones under
# a position-permuted corrupted run) instead.
RESAMPLE_BLIND = {
    ("tracr-induction", "structural"): PREV_HEAD,
    ("tracr-ioi", "structural"): {(EMB, inp(1, "q")): CONSTANT_QK, direct(1, "q"): CONSTANT_QK},
    ("tracr-ioi", "structural-ablation"): {},
    ("tracr-greaterthan", "structural"): {(EMB, inp(0, "q")): CONSTANT_QK, direct(0, "q"): CONSTANT_QK,
                                          (EMB, inp(0, "k")): KIND, direct(0, "k"): KIND},
    ("tracr-greaterthan", "structural-ablation"): {(EMB, inp(0, "k")): KIND, direct(0, "k"): KIND},
    ("tracr-docstring", "structural"): {**PREV_HEAD, (EMB, "blocks.0.hook_mlp_in[:]"): KIND},
}

# structural-zero GT edges whose single zeroing leaves the scored outputs unchanged: each carries
# only the `one`/`tokens:BOS` part of a q or k, the BOS-default score, which decides nothing while
# some key matches every query, as it does on these tasks' data.
ZERO_BLIND = {
    "tracr-induction": {"embed->a0.0(q)", "embed->a0.0(k)", "embed->a1.0(k)"},
    "tracr-ioi": {"embed->a1.0(k)", "embed->a2.0(q)"},
    "tracr-docstring": {"embed->a0.0(q)", "embed->a0.0(k)", "embed->a1.0(q)", "embed->a1.0(k)"},
}


@pytest.fixture(scope="module", params=NAMES)
def setup(request):
    task = get_task(request.param)
    eng = Engine(task.load_model())
    return task, task.data("validation"), eng


def _decode(task, ids):
    inv = {v: k for k, v in task.tracr().input_encoding.items()}
    return [inv[int(i)] for i in ids[1:]]


def test_compiled_model_matches_rasp(setup):
    """The compiled model's decoded outputs equal tracr's causal RASP evaluation, on clean and
    corrupted prompts, at every position (None: an all-zero output)."""
    from tracr.rasp import causal_eval, rasp

    task, d, eng = setup
    rasp.RASPExpr._ids = itertools.count(1)
    program = task.spec.build()
    values = [lab.split(":", 1)[1] for lab in task.tracr().output_labels]
    for tokens in (d.clean[:20], d.corrupted[:20]):
        out = eng.logits(tokens)
        for b in range(tokens.shape[0]):
            for p, ref in enumerate(causal_eval.evaluate(program, _decode(task, tokens[b])), start=1):
                if ref is None:
                    assert out[b, p].abs().max() < 0.05
                else:
                    assert values[int(out[b, p].argmax())] == str(ref) and out[b, p].max() > 0.9


def test_data_well_formed_and_seeded(setup):
    task, d, eng = setup
    out = eng.logits(d.clean)
    m = d.pos_mask
    assert m[:, 0].sum() == 0 and m.any(1).all()
    assert (out.argmax(-1)[m] == d.correct[m]).all()  # the model answers every prompt right
    assert (d.wrong[m] != d.correct[m].unsqueeze(-1)).all()
    assert (d.counterfactual[m] != d.correct[m]).all()
    assert not torch.equal(d.clean, d.corrupted)
    again, test = task.data("validation"), task.data("test")
    assert torch.equal(again.clean, d.clean) and torch.equal(again.corrupted, d.corrupted)
    assert not torch.equal(test.clean, d.clean)
    assert torch.equal(d.metric_values(out, out), torch.zeros(d.n))


def test_registered_as_offline_analogue(setup):
    task = setup[0]
    assert TASKS[task.name] is type(task) and task.offline
    s = task.summary()
    assert s["mirrors"] in ("ioi", "greaterthan", "docstring", "induction")
    assert set(s["n_ground_truth_edges"]) >= {"structural"}


def _position_permuted_cache(eng, tokens):
    """ACDC's tracr resample ablation: the corrupted run also gets shuffled positions."""
    P = tokens.shape[1]
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(P - 1, generator=torch.Generator().manual_seed(49))])
    emb = eng.input_embeddings(tokens)
    emb[1] = emb[1][:, perm]
    return eng.run(tokens, record=True, input_embeds=emb).cache()


def test_ground_truth_is_causally_exact(setup):
    task, d, eng = setup
    g = eng.graph
    clean = eng.logits(d.clean)
    caches = {"resample": eng.cache(d.corrupted), "permuted": _position_permuted_cache(eng, d.corrupted),
              "zero": eng.cache(d.clean, zero=True)}

    def change(mask, cache, where):
        return (eng.logits(d.clean, mask, cache) - clean)[where].abs().max().item()

    for variant, gt in task.ground_truths().items():
        keep = gt.edge_mask(g)
        if variant == "structural-zero":  # matched to zero ablation: the same two checks, zeroing
            assert change((~keep).float(), caches["zero"], slice(None)) < 1e-4
            dead = [short_edge(*g.edge_endpoints[e]) for e in keep.nonzero().flatten().tolist()
                    if change(torch.nn.functional.one_hot(torch.tensor(e), g.n_edges).float(), caches["zero"],
                              d.pos_mask) < 1e-3]
            assert set(dead) == ZERO_BLIND.get(task.name, set()), dead
            continue
        # Everything outside the GT patched at once: outputs unchanged at every position.
        for kind in ("resample", "permuted"):
            assert change((~keep).float(), caches[kind], slice(None)) < 1e-4, (variant, kind)
        # Every GT edge alone: the scored outputs change, except the listed edges.
        blind = {}
        for e in keep.nonzero().flatten().tolist():
            one = torch.zeros(g.n_edges)
            one[e] = 1
            if change(one, caches["resample"], d.pos_mask) < 1e-3:
                blind[g.edge_endpoints[e]] = change(one, caches["zero"], d.pos_mask)
                if RESAMPLE_BLIND[(task.name, variant)].get(g.edge_endpoints[e]) == POSITIONS:
                    assert change(one, caches["permuted"], d.pos_mask) > 0.1, short_edge(*g.edge_endpoints[e])
        expected = RESAMPLE_BLIND[(task.name, variant)]
        assert {short_edge(*e) for e in blind} == {short_edge(*e) for e in expected}, variant
        assert all(v > 0.1 for v in blind.values()), blind  # none is dead: zero ablation sees it


def test_sizes_are_a_parameter():
    """A smaller build compiles to a smaller model with the same circuit."""
    from harness.tasks.tracr_analogues import TracrInduction

    small = TracrInduction(n_tokens=5, half_len=3)
    default = get_task("tracr-induction")
    cs, cd = small.load_model().cfg, default.load_model().cfg
    assert cs.n_ctx == 7 and cs.d_model < cd.d_model and (cs.n_layers, cs.n_heads) == (cd.n_layers, cd.n_heads)
    assert set(small.ground_truths()["structural"].edges) == set(default.ground_truths()["structural"].edges)
    d = small.data("validation")
    assert d.clean.shape == (small.n_per_split, 7)
    assert (Engine(small.load_model()).logits(d.clean).argmax(-1)[d.pos_mask] == d.correct[d.pos_mask]).all()
    with pytest.raises(ValueError):
        TracrInduction(n_tokens=3, half_len=4)
    with pytest.raises(TypeError):
        TracrInduction(vocab=3)


def test_every_method_scores_every_edge(setup):
    task, d, eng = setup
    small = d.subset(torch.arange(4))
    for name, spec in all_methods().items():
        for variant in spec.default_variants:
            r = spec.run(eng, small.with_ablation(spec.references_for(variant)[0]), variant)
            if isinstance(r, CircuitFamily):
                assert r.circuits.dtype == torch.bool and r.circuits.shape[-1] == eng.graph.n_edges
            else:
                assert r.shape == (eng.graph.n_edges,) and torch.isfinite(r).all(), (name, variant)
