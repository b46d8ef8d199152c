"""Circuit drawings and layer x head maps of node scores (issue 15, item 5)."""
import re
import shutil

import numpy as np
import pytest

from harness.core.graph import Graph, node_place
from harness.core.weights import ModelConfig
from harness.report.circuits import circuit_dot, draw_circuit, inline_svg, label, predicted
from harness.report.head_scores import head_scores, touched_slots

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (apt-get install graphviz)")


def _graph():
    return Graph(ModelConfig("toy", n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=5, n_ctx=4, d_mlp=8,
                             split_embed=True))


def test_node_places_and_labels_follow_acdc_names():
    assert node_place("blocks.3.attn.hook_result[:, :, 5]") == (3, 5, "result")
    assert node_place("blocks.2.hook_k_input[:, :, 1]") == (2, 1, "k_input")
    assert node_place("blocks.0.hook_resid_pre[:]") == (-1, None, "resid_pre")
    assert node_place("hook_pos_embed[:]") == (-1, None, "pos_embed")
    assert node_place("blocks.1.hook_mlp_out[:]") == (1, None, "mlp_out")
    with pytest.raises(ValueError, match="not a node name"):
        node_place("blocks.1.mlp.hook_post")
    names = [label(n) for n in ("blocks.3.attn.hook_result[:, :, 5]", "blocks.3.attn.hook_q[:, :, 5]",
                                "blocks.3.hook_v_input[:, :, 5]", "blocks.2.hook_mlp_in[:]", "blocks.2.hook_mlp_out[:]",
                                "hook_embed[:]", "blocks.11.hook_resid_post[:]")]
    assert names == ["a3.5", "a3.5 q", "a3.5 v in", "m2 in", "m2", "embed", "output"]
    g = _graph()
    for n in g.all_nodes:  # every node of the graph has a place
        node_place(n)


def test_predicted_takes_the_top_k_with_a_tied_block_whole_and_nothing_within_the_floor_of_zero():
    s = np.array([0.9, -0.8, 0.5, 0.5, 0.1, 0.0, -1e-9])
    assert predicted(s, 2).tolist() == [True, True, False, False, False, False, False]
    assert predicted(s, 3).tolist() == [True, True, True, True, False, False, False]  # 0.5 and 0.5 tie at the cut
    assert predicted(s, 3, floor=0.35).sum() == 4                                     # within the floor of the cut
    assert predicted(s, 2, floor=0.35).tolist() == [True, True, True, True, False, False, False]  # 0.5 is within 0.35 of 0.8
    # a ranking that scores every edge zero predicts nothing, however large k
    assert not predicted(np.zeros(5), 3).any() and not predicted(np.full(5, 1e-9), 3, floor=1e-6).any()
    assert not predicted(s, 0).any()


def test_a_drawing_colours_edges_by_agreement_with_the_ground_truth():
    g = _graph()
    truth = [0, 3, 7, g.n_edges - 1]
    perfect = np.zeros(g.n_edges)
    perfect[truth] = [4.0, 3.0, 2.0, 1.0]
    dot, counts = circuit_dot(g.edge_endpoints, perfect, truth)
    assert counts == {"tp": 4, "fp": 0, "fn": 0}
    colours = re.findall(r"\tn\d+ -> n\d+ \[.*?color=\"(#\w+)\"", dot.source)
    assert sorted(c for c in colours if c != "#bbbbbb") == ["#1f77b4"] * 4

    wrong = np.zeros(g.n_edges)
    wrong[[0, 1]] = 1.0  # one right, one wrong, three missed; k = 4 but only two edges score above zero
    dot, counts = circuit_dot(g.edge_endpoints, wrong, truth)
    assert counts == {"tp": 1, "fp": 1, "fn": 3}
    colours = re.findall(r"\tn\d+ -> n\d+ \[.*?color=\"(#\w+)\"", dot.source)
    assert sorted(c for c in colours if c != "#bbbbbb") == sorted(["#1f77b4", "#ff7f0e"] + ["#7f7f7f"] * 3)
    # node names hold ':' (a port in DOT), so every edge statement joins node ids, never names
    statements = [ln for ln in dot.source.splitlines() if " -> " in ln.split("[")[0]]
    assert len(statements) == len(colours) and all(re.match(r"\tn\d+ -> n\d+ \[", ln) for ln in statements)
    layers = re.findall(r"subgraph (cluster_\w+)", dot.source)
    assert layers == sorted(set(layers), key=layers.index) and "cluster_inputs" in layers


@needs_dot
def test_drawings_are_written_as_svg_png_and_dot_and_inline_svgs_never_share_an_id(tmp_path):
    g = _graph()
    scores = np.arange(g.n_edges, dtype=float)
    truth = list(range(g.n_edges - 5, g.n_edges))
    a = draw_circuit(g.edge_endpoints, scores, truth, tmp_path / "a", "a")
    b = draw_circuit(g.edge_endpoints, scores, truth, tmp_path / "b", "b")
    assert a.counts == {"tp": 5, "fp": 0, "fn": 0}
    for stem in ("a", "b"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{stem}.svg").stat().st_size > 0 and (tmp_path / f"{stem}.gv").exists()
    assert a.svg.startswith("<svg") and "<?xml" not in a.svg and "<!DOCTYPE" not in a.svg
    ids_a, ids_b = set(re.findall(r'\bid="([^"]+)"', a.svg)), set(re.findall(r'\bid="([^"]+)"', b.svg))
    assert ids_a and not ids_a & ids_b
    assert inline_svg('<?xml version="1.0"?>\n<svg id="graph0"><g id="node1"/></svg>', "x y") == \
        '<svg id="x_y_graph0"><g id="x_y_node1"/></svg>'


def test_without_dot_the_source_is_written_and_no_svg_is_claimed(tmp_path, monkeypatch):
    import graphviz

    def no_dot(*a, **k):
        raise graphviz.ExecutableNotFound(("dot",))

    monkeypatch.setattr(graphviz.Digraph, "pipe", no_dot)
    g = _graph()
    d = draw_circuit(g.edge_endpoints, np.arange(g.n_edges, dtype=float), [0, 1], tmp_path / "c", "c")
    assert d.svg is None and d.png_path is None and (tmp_path / "c.gv").read_text().startswith("digraph")
    assert not (tmp_path / "c.svg").exists()


def test_too_many_edges_are_not_drawn(tmp_path, monkeypatch):
    import harness.report.circuits as circuits

    monkeypatch.setattr(circuits, "MAX_DRAWN_EDGES", 3)
    g = _graph()
    assert draw_circuit(g.edge_endpoints, np.arange(g.n_edges, dtype=float), [0, 1, 2, 3], tmp_path / "d", "d") is None


def test_head_scores_take_the_largest_score_of_a_slot_s_edges():
    g = _graph()
    ids = g.edge_ids
    scores = np.zeros(g.n_edges)
    # head 0.1's output into MLP 1's input: both slots get 2; head 1.0's query input: 3; a DIRECT edge of head 1.1: -5
    scores[ids["blocks.0.attn.hook_result[:, :, 1] -> blocks.1.hook_mlp_in[:]"]] = 2.0
    scores[ids["hook_embed[:] -> blocks.1.hook_q_input[:, :, 0]"]] = 3.0
    scores[ids["blocks.1.hook_v_input[:, :, 1] -> blocks.1.attn.hook_v[:, :, 1]"]] = -5.0
    m = head_scores(g.edge_endpoints, scores, 2, 2, mlp=True)
    assert m.tolist() == [[0.0, 2.0, 0.0], [3.0, 5.0, 2.0]]
    assert head_scores(g.edge_endpoints, scores, 2, 2, mlp=False).shape == (2, 2)
    # every node-score rule agrees: a slot's score is the largest of its nodes' scores
    node = dict(zip(g.roc_nodes, g.node_scores(__import__("torch").tensor(scores)).tolist()))
    assert m[1, 1] == max(v for n, v in node.items() if node_place(n)[:2] == (1, 1))
    truth = [ids["blocks.0.attn.hook_result[:, :, 1] -> blocks.1.hook_mlp_in[:]"]]
    assert touched_slots(g.edge_endpoints, truth, 2) == {(0, 1), (1, 2)}


@needs_dot
def test_the_report_embeds_circuit_svgs_and_head_maps_per_task(tmp_path):
    import json

    from harness.cli import main
    from harness.report.render import CIRCUIT_METHODS
    from harness.tasks import get_task

    out = tmp_path / "out"
    assert main(["-q", "run", "--tasks", "tracr-xproportion", "--methods", "act-patch-edge", "grad-wrong", "eap",
                 "--variants", "batched", "uniform/activation", "logit-diff-mse/weight-edge", "noising",
                 "--controls", "trained", "--bootstrap", "0", "--no-faithfulness", "--no-progress",
                 "--out", str(out)]) == 0
    edges = json.loads((out / "edges" / "tracr-xproportion.json").read_text())
    g_names = [f"{s} -> {r}" for s, r in edges["edges"]]
    truth = get_task("tracr-xproportion").ground_truths()
    assert set(edges["ground_truth"]) == set(truth)
    for name, gt in truth.items():  # the run folder holds each ground truth's edges, by index
        assert sorted(g_names[i] for i in edges["ground_truth"][name]) == sorted(f"{s} -> {r}" for s, r in gt.edges)
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for ref in ("resample", "zero"):
        for method in CIRCUIT_METHODS:
            stem = f"circuit_tracr-xproportion_{ref}_{method}"
            assert (out / f"{stem}.png").stat().st_size > 0 and f"![{stem}]({stem}.png)" in md
            assert f'id="{stem}_graph0"' in html  # the SVG itself, inline
    assert html.count("<svg") == 4 and "<?xml" not in html
    assert 'alt="head_scores_tracr-xproportion"' in html and "head_scores_tracr-xproportion.png" in md
    # the drawing is the scores' top-k: rebuild one from the record and compare its counts
    rec = json.loads((out / "records" / "tracr-xproportion__act-patch-edge__batched__zero.json").read_text())
    k = len(edges["ground_truth"]["acdc"])
    p = predicted(rec["scores"], k, rec["tie_floor"])
    tp = int(p[edges["ground_truth"]["acdc"]].sum())
    assert f"in both {tp}</text>" in html.split('id="circuit_tracr-xproportion_zero_act-patch-edge_graph0"')[1]


@needs_dot
def test_draw_takes_any_stored_ranking_and_refuses_what_the_run_cannot_give(tmp_path, capsys):
    import json

    from harness.cli import main

    out = tmp_path / "out"
    assert main(["-q", "run", "--tasks", "tracr-reverse", "--methods", "eap", "--variants", "noising", "denoising",
                 "--ablation", "zero", "--controls", "trained", "--bootstrap", "0", "--no-faithfulness",
                 "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["draw", str(out), "--task", "tracr-reverse", "--method", "eap", "--variant", "noising", "--k", "3"]) == 0
    stem = out / "circuit_tracr-reverse_zero_eap_noising_k3"
    assert stem.with_suffix(".png").stat().st_size > 0 and stem.with_suffix(".svg").stat().st_size > 0
    rec = json.loads((out / "records" / "tracr-reverse__eap__noising__zero.json").read_text())
    truth = json.loads((out / "edges" / "tracr-reverse.json").read_text())["ground_truth"]["acdc"]
    p = predicted(rec["scores"], 3, rec["tie_floor"])
    assert f"in both {int(p[truth].sum())}, predicted only {int(p.sum() - p[truth].sum())}" in capsys.readouterr().out
    # without --variant: the headline's choice (summary.json), k = the ground truth's size
    best = json.loads((out / "summary.json").read_text())["headline"]["zero"]["tracr-reverse"]["methods"]["eap"]
    assert main(["draw", str(out), "--task", "tracr-reverse", "--method", "eap"]) == 0
    assert (out / f"circuit_tracr-reverse_zero_eap_{best['best_variant']}_k{len(truth)}.png").exists()
    capsys.readouterr()
    for args, says in [(["--variant", "nope"], "no eap variant 'nope'"), (["--reference", "resample"], "under the resample"),
                       (["--ground-truth", "made-up"], "no ground truth 'made-up'"), (["--k", "0"], "at least 1")]:
        with pytest.raises(SystemExit) as e:
            main(["draw", str(out), "--task", "tracr-reverse", "--method", "eap", *args])
        assert e.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["draw", str(tmp_path / "none"), "--task", "tracr-reverse", "--method", "eap"])
    assert "run `circuit-bench run --tasks tracr-reverse" in capsys.readouterr().err
