"""The reference axis: every result names the source it measures against, ACDC's tracr position
scramble, and the identity linking grad-wrong's activation site to EAP on one reference."""
import pandas as pd
import pytest
import torch

from harness.core import objectives
from harness.core.data import Metric, TaskData
from harness.core.engine import Engine
from harness.core.references import acdc_position_scramble, source_cache
from harness.methods import get_method
from harness.run.runner import RunConfig, run
from harness.tasks import get_task
from test_eap import tiny_task


def test_scramble_is_acdcs_permutation():
    """ACDC: `torch.random.manual_seed(49); tens[torch.randperm(tens.shape[0])]` on hook_pos_embed[0]."""
    state = torch.random.get_rng_state()
    try:
        for n in (4, 5, 7):
            torch.random.manual_seed(49)
            assert torch.equal(acdc_position_scramble(n), torch.randperm(n))
    finally:
        torch.random.set_rng_state(state)
    assert torch.equal(acdc_position_scramble(4), torch.tensor([2, 3, 0, 1]))  # tracr-reverse: BOS moves too


# tracr-reverse's length sub-circuit (head 0.0 and MLPs 0-1 compute the length, 3 in every prompt):
# no resample of these prompts changes it, scrambled or not; zero ablation sees it.
REVERSE_CONSTANT = {
    ("blocks.0.attn.hook_result[:, :, 0]", "blocks.0.hook_mlp_in[:]"), ("blocks.0.hook_mlp_out[:]", "blocks.1.hook_mlp_in[:]"),
    ("blocks.0.hook_v_input[:, :, 0]", "blocks.0.attn.hook_v[:, :, 0]"), ("hook_embed[:]", "blocks.0.hook_mlp_in[:]"),
    ("hook_embed[:]", "blocks.0.hook_v_input[:, :, 0]"), ("hook_embed[:]", "blocks.1.hook_mlp_in[:]"),
}


@pytest.mark.parametrize("name, plain_visible, scrambled_visible", [("tracr-reverse", 3, 9), ("tracr-xproportion", 4, 8)])
def test_scramble_lets_resample_patching_see_positional_edges(name, plain_visible, scrambled_visible):
    """Each ACDC ground-truth edge patched alone under resample: without the scramble positions are
    equal in both runs and reverse shows 3 of 15 edges (xproportion 4 of 10); with ACDC's scramble
    9 of 15 (8 of 10), every edge out of hook_pos_embed among them."""
    task = get_task(name)
    e = Engine(task.load_model(dtype=torch.float64))
    data = task.data()
    assert data.position_scramble is not None and data.ablation == "resample"
    plain = TaskData(**{**data.__dict__, "position_scramble": None})
    clean = e.logits(data.clean)
    edges = task.ground_truths()["acdc"].edges
    seen = {}
    for tag, d in (("plain", plain), ("scrambled", data)):
        src = source_cache(e, d)
        seen[tag] = set()
        for s, r in edges:
            one = torch.zeros(e.graph.n_edges, dtype=torch.float64)
            one[e.graph.edge_ids[f"{s} -> {r}"]] = 1
            if (e.logits(d.clean, one, src) - clean)[d.pos_mask].abs().max().item() > 1e-6:
                seen[tag].add((s, r))
    assert len(seen["plain"]) == plain_visible and len(seen["scrambled"]) == scrambled_visible
    assert seen["plain"] <= seen["scrambled"]
    assert {(s, r) for s, r in edges if s.startswith("hook_pos_embed")} <= seen["scrambled"]
    if name == "tracr-reverse":
        assert set(edges) - seen["scrambled"] == REVERSE_CONSTANT


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_grad_wrong_activation_site_is_eap_with_the_same_loss(ablation):
    """Same loss (the task metric), same reference: grad-wrong/activation = -(EAP noising), since one
    takes gradient x (activation - source) and the other gradient x (source - activation)."""
    e, data = tiny_task(ablation, seed=3)
    data = TaskData(**{**data.__dict__, "metric": Metric("neg-logit-diff", objectives.neg_answer_logit_diff,
                                                         {"pos_mask": "pos_mask", "correct": "correct", "wrong": "wrong"})})
    gw = get_method("grad-wrong").run(e, data, "task-metric/activation")
    eap = get_method("eap").run(e, data, "noising", objective="metric")
    assert eap.abs().max() > 1e-3
    torch.testing.assert_close(gw, -eap, rtol=1e-9, atol=1e-12)


def test_every_row_names_its_reference_and_weight_sites_run_under_zero_only(tmp_path):
    st = run(RunConfig(tasks=["tracr-reverse"], methods=["grad-wrong", "eap"], out=str(tmp_path), bootstrap=0,
                       faithfulness=False, progress=False,
                       variants=["noising", "uniform/activation", "uniform/weight-edge-taylor"]))
    df = pd.read_csv(tmp_path / "results.csv")
    got = set(map(tuple, df[["method", "variant", "ablation"]].drop_duplicates().values.tolist()))
    assert got == {("eap", "noising", "resample"), ("eap", "noising", "zero"),
                   ("grad-wrong", "uniform/activation", "resample"), ("grad-wrong", "uniform/activation", "zero"),
                   ("grad-wrong", "uniform/weight-edge-taylor", "zero")}
    scr = df.drop_duplicates(["method", "variant", "ablation"]).set_index(["method", "variant", "ablation"])["position_scramble"]
    assert scr[("eap", "noising", "resample")] and not scr[("eap", "noising", "zero")]
    # the two references give different scores: they are different measurements
    recs = {(r["method"], r["ablation"]): r["scores"] for r in st.records() if r["variant"] == "noising"
            and r.get("control") == "trained"}
    assert recs[("eap", "resample")] != recs[("eap", "zero")]
    from harness.report.render import render

    report = render(tmp_path).read_text(encoding="utf-8")
    assert "resample reference, edge level" in report and "zero reference, edge level" in report


def test_scramble_setting_is_part_of_what_resume_checks(tmp_path, monkeypatch):
    cfg = dict(tasks=["tracr-reverse"], methods=["eap"], variants=["noising"], out=str(tmp_path), bootstrap=0,
               faithfulness=False, progress=False, ablations=("resample",))
    a = run(RunConfig(**cfg)).get("tracr-reverse", "eap", "noising", "resample")
    b = run(RunConfig(**cfg, position_scramble=False)).get("tracr-reverse", "eap", "noising", "resample")
    assert a["position_scramble"] and not b["position_scramble"] and a["scores"] != b["scores"]


@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_reference_logits_are_the_references_and_are_remembered_per_weights_and_data(ablation):
    """`reference_logits` (every ranking's objective scale) gives `references`' clean and source
    logits at the scored columns; a second call with the same weights and data tensors reuses them, while other data,
    other weights, or weights that died and left their id behind are computed afresh."""
    import gc

    from harness.core.references import reference_logits, references
    from harness.core.weights import random_weights

    e, data = tiny_task(ablation, seed=11)
    refs = references(e, data)
    clean, source = reference_logits(e, data)
    cols = data.scored_positions()
    assert clean.shape[1] == len(cols) < data.clean.shape[1]  # only the scored columns are unembedded
    torch.testing.assert_close(clean, refs.clean_logits[:, cols], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(source, refs.source_logits[:, cols], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(clean, source)
    again = reference_logits(e, data.with_ablation(ablation))  # a new TaskData over the same tensors
    assert again[0] is clean and again[1] is source
    other = data.subset(torch.tensor([1, 0, 2]))
    assert reference_logits(e, other)[0] is not clean
    w2 = random_weights(e.cfg, seed=12, dtype=torch.float64)
    fresh = reference_logits(Engine(w2), data)
    assert not torch.allclose(fresh[0], clean)
    del fresh, w2
    gc.collect()
    w3 = random_weights(e.cfg, seed=13, dtype=torch.float64)  # may reuse the freed weights' id
    want = references(Engine(w3), data).clean_logits[:, cols]
    torch.testing.assert_close(reference_logits(Engine(w3), data)[0], want, rtol=1e-12, atol=1e-12)
