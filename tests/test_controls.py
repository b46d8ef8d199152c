"""Controls (issue 21): reset networks keep the architecture and change the weights; structure-only
rankings never read ground truth; the report's difference is the two AUCs' difference."""
from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import torch

from harness.core.architectures import ARCHITECTURES
from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.core.ground_truth import ground_truth_dir
from harness.core.reset import reset_weights
from harness.core.weights import random_weights
from harness.methods import get_method
from harness.report.controls import control_frame
from harness.run.runner import RunConfig, jobs_for, run
from harness.run.store import ResultStore

FAST = dict(tasks=["tracr-xproportion"], bootstrap=0, progress=False, faithfulness=False)


@pytest.mark.parametrize("kind", ["acdc", "random"])
def test_a_reset_changes_the_weights_and_keeps_the_architecture(kind):
    w = random_weights(ARCHITECTURES["redwood_attn_2l"], seed=1)
    r = reset_weights(w, kind, seed=0)
    assert r.cfg == w.cfg and Graph(r.cfg).n_edges == Graph(w.cfg).n_edges
    assert r.params.keys() == w.params.keys()
    assert all(r[k].shape == w[k].shape and r[k].dtype == w[k].dtype for k in w.params)
    changed = [k for k in w.params if not torch.equal(r[k], w[k])]
    assert "blocks.0.attn.W_Q" in changed
    assert all(torch.equal(r[k], p) for k, p in reset_weights(w, kind, seed=0).params.items())  # seeded
    assert any(not torch.equal(r[k], p) for k, p in reset_weights(w, kind, seed=1).params.items())


def test_acdc_reset_permutes_heads_and_neurons_independently():
    """ACDC's scramble_sd: each of W_Q, W_K, W_V, b_* permuted over heads on its own, W_in columns
    and b_in over neurons; W_O, b_O, W_out, embeddings and LayerNorms untouched."""
    cfg = ARCHITECTURES["gpt2"]
    small = type(cfg)(**{**cfg.to_dict(), "n_layers": 2, "d_vocab": 50, "n_ctx": 16})
    w = random_weights(small, seed=3)
    r = reset_weights(w, "acdc", seed=0)
    for k in w.params:
        leaf = k.rsplit(".", 1)[-1]
        if ".attn." in k and leaf in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
            rows = {tuple(x.flatten().tolist()) for x in w[k]}
            assert {tuple(x.flatten().tolist()) for x in r[k]} == rows and not torch.equal(r[k], w[k])
        elif k.endswith(("mlp.W_in", "mlp.b_in")):
            assert not torch.equal(r[k], w[k])
            assert torch.equal(r[k].sort(-1).values if k.endswith("b_in") else r[k].T.sort(0).values.sort(1).values,
                               w[k].sort(-1).values if k.endswith("b_in") else w[k].T.sort(0).values.sort(1).values)
        else:
            assert torch.equal(r[k], w[k]), k
    perms = [torch.cdist(r[f"blocks.0.attn.{m}"].flatten(1), w[f"blocks.0.attn.{m}"].flatten(1)).argmin(1)
             for m in ("W_Q", "W_K", "W_V")]
    assert not (torch.equal(perms[0], perms[1]) and torch.equal(perms[1], perms[2]))  # one permutation each


def test_structure_only_rankings_never_read_ground_truth(tmp_path, monkeypatch):
    """A permuted ground truth changes the structure baselines' AUCs, never their scores."""
    cfg = dict(methods=["structure"], ablations=("zero",), **FAST)
    first = {r["variant"]: r for r in run(RunConfig(out=str(tmp_path / "a"), **cfg)).records()}
    gt = tmp_path / "gt"
    shutil.copytree(ground_truth_dir(), gt)
    g = Graph(ARCHITECTURES["tracr-xproportion"])
    f = gt / "tracr-xproportion.acdc.json"
    body = json.loads(f.read_text())
    perm = torch.randperm(g.n_edges, generator=torch.Generator().manual_seed(0))[: len(body["edges"])]
    body["edges"] = [list(g.edge_endpoints[i]) for i in perm.tolist()]
    f.write_text(json.dumps(body))
    monkeypatch.setenv("CIRCUIT_BENCH_GROUND_TRUTH", str(gt))
    second = {r["variant"]: r for r in run(RunConfig(out=str(tmp_path / "b"), **cfg)).records()}
    assert first.keys() == second.keys() and len(first) == 8
    assert all(first[v]["scores"] == second[v]["scores"] for v in first)
    auc = lambda rec: next(r["auc"] for r in rec["rows"] if r["ground_truth"] == "acdc" and r["level"] == "edge")  # noqa: E731
    assert any(auc(first[v]) != auc(second[v]) for v in first)


def test_structure_scores_follow_their_rule():
    e = Engine(random_weights(ARCHITECTURES["tracr-reverse"], seed=0))
    g = e.graph
    late = get_method("structure").fn(e, None, rule="receiver-late")
    out = g.edge_ids[f"blocks.{g.cfg.n_layers - 2}.hook_mlp_out[:] -> blocks.{g.cfg.n_layers - 1}.hook_resid_post[:]"]
    first_layer = [i for i, (s, r) in enumerate(g.edge_endpoints) if r.startswith("blocks.0.")]
    assert late[out] > late[first_layer].max() and (late > 0).all()


def test_reset_controls_run_by_default_on_tracr_but_not_for_model_free_methods_or_acdc():
    jobs = jobs_for(RunConfig(tasks=["tracr-xproportion"], methods=["random", "structure", "acdc", "eap"]))
    resets = {(m, c) for _, m, _, _, c in jobs if c == "reset"}
    assert resets == {("eap", "reset")}
    asked = jobs_for(RunConfig(tasks=["tracr-xproportion"], methods=["acdc"], controls=("trained", "reset")))
    assert {c for *_, c in asked} == {"trained", "reset"}
    assert {c for *_, c in jobs_for(RunConfig(tasks=["ioi"], methods=["eap"]))} == {"trained"}


def test_the_report_difference_is_the_two_aucs_difference(tmp_path):
    st = run(RunConfig(out=str(tmp_path), methods=["eap", "structure"], variants=["noising-abs", "receiver-late",
                                                                                  "sender-late"], reset_seeds=3, **FAST))
    resets = [r for r in st.records() if r.get("control") == "reset"]
    assert resets and all(row["n_seeds"] == 3 and row["auc_lo"] <= row["auc"] <= row["auc_hi"]
                          for r in resets for row in r["rows"] if row["auc"] == row["auc"])
    df = pd.read_csv(tmp_path / "results.csv")
    f = control_frame(df[df["status"] == "ok"])
    both = f[f["reset_auc"].notna()]
    assert len(both) == 8  # eap noising-abs: 2 references x 2 ground truths x 2 levels
    assert ((both["delta"] - (both["auc"] - both["reset_auc"])).abs() < 1e-12).all()
    for _, r in both.iterrows():  # the trained and reset AUCs are the rows of results.csv
        pick = df[(df["task"] == r["task"]) & (df["method"] == "eap") & (df["variant"] == "noising-abs")
                  & (df["ablation"] == r["ablation"]) & (df["ground_truth"] == r["ground_truth"]) & (df["level"] == r["level"])]
        assert pick.set_index("control")["auc"].to_dict() == {"trained": r["auc"], "reset": r["reset_auc"]}
    assert set(f["best_structure_rule"].dropna()) <= {"receiver-late", "sender-late"}
    from harness.report.render import render

    report = render(tmp_path).read_text(encoding="utf-8")
    cells = re.findall(r"(\d\.\d{3}) − (\d\.\d{3}) = ([+-]\d\.\d{3})", report)
    assert cells and all(abs(float(a) - float(b) - float(d)) <= 0.0015 for a, b, d in cells)
    assert (tmp_path / "controls_zero.png").exists() and "controls_zero.png" in report


def test_a_reset_record_is_keyed_apart_from_the_trained_one(tmp_path):
    st = ResultStore(tmp_path)
    assert st.path("t", "m", "v", "zero") != st.path("t", "m", "v", "zero", "reset")
    assert st.path("t", "m", "v", "zero").name == "t__m__v__zero.json"  # trained records keep their names


def test_model_free_methods_run_on_a_pretrained_task_without_its_weights(tmp_path, monkeypatch):
    """Structure-only and random rankings need only the architecture's graph and the ground truth,
    so IOI's are known offline; the methods that need the model are skipped as before."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("CIRCUIT_BENCH_WEIGHTS_DIR", raising=False)
    st = run(RunConfig(tasks=["ioi"], methods=["structure", "eap"], variants=["receiver-late", "noising"],
                       ablations=("zero",), out=str(tmp_path / "o"), bootstrap=0, progress=False))
    ok = st.get("ioi", "structure", "receiver-late", "zero")
    assert ok["status"] == "ok" and len(ok["scores"]) == Graph(ARCHITECTURES["gpt2"]).n_edges
    row = next(r for r in ok["rows"] if r["ground_truth"] == "acdc" and r["level"] == "edge")
    edges = json.loads((ground_truth_dir() / "ioi.acdc.json").read_text())["edges"]
    assert 0.5 < row["auc"] < 0.7 and row["n_positive"] == len(edges)
    assert st.get("ioi", "eap", "noising", "zero")["status"] == "skipped"


def test_a_small_tasks_reset_networks_are_built_once_per_seed(tmp_path, monkeypatch):
    """Reset networks are seeded, so a small model's are built once per seed and shared by every
    method and variant of the task (each its own engine); the AUCs are those of networks built
    afresh per run."""
    import harness.core.reset as reset

    built = []
    real = reset.reset_weights
    monkeypatch.setattr(reset, "reset_weights", lambda w, kind, seed: built.append(seed) or real(w, kind, seed))
    cfg = dict(methods=["eap", "grad-wrong"], variants=["noising", "uniform/activation"], reset_seeds=2, **FAST)
    st = run(RunConfig(out=str(tmp_path / "a"), **cfg))
    resets = [r for r in st.records() if r.get("control") == "reset"]
    assert len(resets) == 4 and sorted(built) == [0, 1]  # 2 variants x 2 references, 2 seeds
    import harness.run.runner as runner

    monkeypatch.setattr(runner, "RESET_CACHE_BYTES", 0)  # built per run, as for a large model
    fresh = {(r["variant"], r["ablation"]): r["rows"] for r in run(RunConfig(out=str(tmp_path / "b"), **cfg)).records()
             if r.get("control") == "reset"}
    assert len(built) == 2 + 4 * 2
    for r in resets:
        assert r["rows"] == fresh[(r["variant"], r["ablation"])]
