"""tracr models: compiled from the bundled RASP programs, converted, and checked against tracr."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from harness.core.architectures import ARCHITECTURES
from harness.core.engine import Engine
from harness.programs.rasp_programs import PROGRAMS
from harness.programs.tracr_models import _cache_key, compile_program, load_tracr

INPUTS = {
    "tracr-reverse": [list(p) for p in itertools.permutations([1, 2, 3])] + [[1, 1, 2, 3, 3], [2], [3, 1]],
    "tracr-xproportion": [list(s) for s in itertools.product("wxyz", repeat=3)] + [list("xxwzy")],
}


@pytest.fixture(scope="module")
def compiled():
    return {n: compile_program(PROGRAMS[n]) for n in PROGRAMS if n in INPUTS}


def assert_reproduces_tracr(m, tm, inputs):
    """The converted model `m` (load_tracr) gives tracr's model `tm` (compile_program) residual
    outputs and decoded outputs on every input sequence (also used for user programs)."""
    eng = Engine(m.weights.to(dtype=torch.float64))
    by_len = {}
    for s in inputs:
        by_len.setdefault(len(s), []).append(s)
    for seqs in by_len.values():
        ids = m.encode(seqs)
        out = tm.forward(tm.params, jnp.array(ids.numpy()))
        tr = eng.run(ids, record=True)
        np.testing.assert_allclose(tr.output_input.numpy(), np.asarray(out.transformer_output.output), atol=1e-5)
        # decoded outputs agree with tracr's own decoding (position 0 is BOS)
        for row, s in zip(tr.logits, seqs):
            want = tm.apply(["BOS"] + s).decoded[1:]
            if m.categorical_output:
                values = [lab.split(":", 1)[1] for lab in m.output_labels]
                got = [values[i] for i in row[1:].argmax(-1).tolist()]
                assert got == [str(v) for v in want]
            else:
                np.testing.assert_allclose(row[1:, 0].numpy(), np.array(want, dtype=float), atol=1e-6)


@pytest.mark.parametrize("name", list(INPUTS))
def test_converted_model_reproduces_tracr(name, compiled):
    program, tm = compiled[name]
    assert_reproduces_tracr(load_tracr(name), tm, INPUTS[name])


def test_reverse_reverses_and_proportion_counts():
    m = load_tracr("tracr-reverse")
    lg = Engine(m.weights).logits(m.encode([[1, 2, 3], [3, 1, 2]]))
    assert lg[:, 1:].argmax(-1).tolist() == [[2, 1, 0], [1, 0, 2]]
    m = load_tracr("tracr-xproportion")
    out = Engine(m.weights).logits(m.encode([list("xwwx")]))[0, 1:, 0]
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, 1 / 3, 0.5]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(INPUTS))
def test_compiled_shapes_are_the_real_configs(name):
    """The architecture table used for offline graphs and timing matches the compiler."""
    assert load_tracr(name).weights.cfg == ARCHITECTURES[name]


def test_unembedding_is_a_projection_onto_output_labels():
    m = load_tracr("tracr-reverse")
    W_U = m.weights["unembed.W_U"]
    cols = [m.residual_labels.index(lab) for lab in m.output_labels]
    assert W_U.sum() == len(cols) and all(W_U[c, j] == 1 for j, c in enumerate(cols))
    assert all(lab.startswith("aggregate") for lab in m.output_labels)


def test_cache_is_used_and_keyed_by_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUIT_BENCH_CACHE", str(tmp_path))
    a = load_tracr("tracr-xproportion")
    files = list((tmp_path / "tracr").glob("*.pt"))
    assert len(files) == 1
    b = load_tracr("tracr-xproportion")  # from the cache
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights.params)
    files[0].write_bytes(b"not a torch file")  # a corrupt cache is rebuilt, not trusted
    c = load_tracr("tracr-xproportion")
    assert torch.equal(c.weights["embed.W_E"], a.weights["embed.W_E"])
    import dataclasses

    spec = PROGRAMS["tracr-xproportion"]
    assert _cache_key(spec) != _cache_key(dataclasses.replace(spec, max_seq_len=6))
    assert _cache_key(spec) != _cache_key(dataclasses.replace(spec, mlp_exactness=50))


def test_two_writers_of_one_cache_file_do_not_clash(tmp_path, monkeypatch):
    """Two processes compiling one program at once (two trainings started together) each write the
    cache file: a second writer finishing inside the first one's write must not take its
    temporary file away (it did, with one fixed temporary name)."""
    import harness.programs.tracr_models as tm

    monkeypatch.setenv("CIRCUIT_BENCH_CACHE", str(tmp_path))
    save, inner = torch.save, []

    def save_while_another_writes(obj, f):
        save(obj, f)
        if not inner:  # the second writer runs its whole write in the middle of the first one's
            inner.append(None)
            inner[0] = load_tracr("tracr-xproportion", use_cache=True)

    monkeypatch.setattr(tm.torch, "save", save_while_another_writes)
    outer = load_tracr("tracr-xproportion")
    assert inner[0] is not None and torch.equal(outer.weights["embed.W_E"], inner[0].weights["embed.W_E"])
    assert [p.name for p in (tmp_path / "tracr").iterdir()] == [f"tracr-xproportion-{_cache_key(PROGRAMS['tracr-xproportion'])}.pt"]


def test_bos_and_tokens_encoded_by_the_compiler():
    m = load_tracr("tracr-xproportion")
    assert m.encode([list("wxyz")]).tolist() == [[0, 2, 3, 4, 5]]
    with pytest.raises(KeyError):
        m.encode([["q"]])


@pytest.mark.parametrize("name", list(INPUTS))
def test_task_data_subsets_keep_a_working_metric(name, tracr_tasks):
    t = tracr_tasks[name]
    d = t.data()
    e = Engine(t.load_model())
    sub = d.subset(torch.tensor([0, 2, 3]))
    clean = e.logits(sub.clean)
    assert sub.metric_values(clean, clean).shape == (3,)
    assert float(sub.metric_values(e.logits(sub.corrupted), clean).mean()) > 0
