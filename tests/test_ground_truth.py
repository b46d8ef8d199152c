"""Stored ground truths: ACDC's counts, validation against the graph, clear errors."""
import json

import pytest

from harness.core.architectures import ARCHITECTURES
from harness.core.ground_truth import GroundTruthError, ground_truth_dir, ground_truths_for, load_ground_truth
from harness.core.graph import Graph

# (edges, nodes) as ACDC counts them: docs/tasks.md#ioi-ground-truth, docs/tasks.md#greater-than-ground-truth, docs/tasks.md#docstring-ground-truth, docs/tasks.md#tracr-reverse, docs/tasks.md#tracr-xproportion
ACDC = {
    "ioi": ("gpt2", 1041, 196),
    "greaterthan": ("gpt2", 262, 77),
    "docstring": ("attn-only-4l", 37, 34),
    "tracr-xproportion": ("tracr-xproportion", 10, 11),
    "tracr-reverse": ("tracr-reverse", 15, 16),
}


@pytest.mark.parametrize("task", list(ACDC))
def test_acdc_ground_truth_counts(task):
    arch, n_edges, n_nodes = ACDC[task]
    gt = ground_truths_for(task)["acdc"]
    g = Graph(ARCHITECTURES[arch])
    assert gt.n_edges == n_edges == int(gt.edge_mask(g).sum())
    assert int(gt.node_mask(g).sum()) == n_nodes
    assert "Conmy" in gt.source


def test_every_ground_truth_file_validates():
    files = sorted(ground_truth_dir().glob("*.json"))
    assert files
    for p in files:
        gt = load_ground_truth(p)
        arch = gt.graph
        if arch in ARCHITECTURES:
            gt.edge_mask(Graph(ARCHITECTURES[arch]))


def test_ioi_has_no_embed_to_name_mover_query():
    g = Graph(ARCHITECTURES["gpt2"])
    gt = ground_truths_for("ioi")["acdc"]
    assert ("blocks.0.hook_resid_pre[:]", "blocks.9.hook_q_input[:, :, 9]") not in gt.edges
    assert ("blocks.0.hook_resid_pre[:]", "blocks.9.hook_k_input[:, :, 9]") in gt.edges
    assert int(gt.edge_mask(g).sum()) == 1041


def write(tmp_path, body):
    p = tmp_path / "x.acdc.json"
    p.write_text(body if isinstance(body, str) else json.dumps(body))
    return p


def test_unknown_node_names_file_and_entry(tmp_path):
    body = {"task": "x", "variant": "acdc", "graph": "tracr-xproportion", "source": "test",
            "edges": [["hook_embed[:]", "blocks.0.hook_mlp_in[:]"], ["hook_embed[:]", "blocks.7.hook_mlp_in[:]"]]}
    gt = load_ground_truth(write(tmp_path, body))
    with pytest.raises(GroundTruthError, match=r"x\.acdc\.json: edge #1 .*blocks\.7\.hook_mlp_in"):
        gt.edge_mask(Graph(ARCHITECTURES["tracr-xproportion"]))


def test_non_edge_between_known_nodes(tmp_path):
    body = {"task": "x", "variant": "acdc", "graph": "tracr-xproportion", "source": "test",
            "edges": [["blocks.1.attn.hook_result[:, :, 0]", "blocks.0.hook_mlp_in[:]"]]}
    with pytest.raises(GroundTruthError, match="is not an edge"):
        load_ground_truth(write(tmp_path, body)).edge_mask(Graph(ARCHITECTURES["tracr-xproportion"]))


@pytest.mark.parametrize("body,match", [
    ("{not json", "not valid JSON"),
    ({"task": "x", "variant": "acdc", "graph": "g", "edges": []}, "missing key"),
    ({"task": "x", "variant": "acdc", "graph": "g", "source": "s", "edges": [["a"]]}, "edge #0"),
    ({"task": "x", "variant": "acdc", "graph": "g", "source": "s", "edges": [["a", "b"], ["a", "b"]]}, "duplicate"),
])
def test_malformed_files(tmp_path, body, match):
    with pytest.raises(GroundTruthError, match=match):
        load_ground_truth(write(tmp_path, body))
