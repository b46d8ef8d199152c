"""The graph must be ACDC's, edge for edge: the counts are the denominators of every TPR/FPR."""
import json

import pytest
import torch

from harness.core.architectures import ARCHITECTURES
from harness.cli import main
from harness.core.graph import Graph

# docs/graph-and-patching.md#computational-graph (verified there by building ACDC's graph); the paper quotes 32,923, 1,377, 305.
ACDC_COUNTS = {
    "gpt2": (32491, 432, 444, 32923, 1022),
    "attn-only-4l": (1281, 96, 96, 1377, 226),
    "redwood_attn_2l": (257, 48, 48, 305, 114),
    "tracr-reverse": (94, 12, 16, 106, 35),
    "tracr-xproportion": (32, 6, 8, 38, 19),
}


@pytest.mark.parametrize("name", list(ACDC_COUNTS))
def test_counts_match_acdc(name):
    g = Graph(ARCHITECTURES[name])
    add, direct, placeholder, counted, roc_nodes = ACDC_COUNTS[name]
    s = g.summary()
    assert s["edges_by_type"] == {"ADDITION": add, "DIRECT": direct, "PLACEHOLDER": placeholder}
    assert s["edges"] == counted == len(g.edge_names) == len(set(g.edge_names))
    assert s["roc_nodes"] == roc_nodes


def test_gpt2_closed_form_and_layer_rule():
    g = Graph(ARCHITECTURES["gpt2"])
    # a q/k/v receiver in layer L has 1 + 13 L senders, MLP L has 1 + 12 + 13 L, resid_post 157.
    for r in g.receivers:
        expected = {"q": 1 + 13 * r.layer, "k": 1 + 13 * r.layer, "v": 1 + 13 * r.layer, "mlp": 13 + 13 * r.layer, "out": 157}[r.kind]
        assert r.n_upstream == expected
    # same-layer head -> MLP edges exist; MLP L -> heads of layer L do not.
    assert "blocks.3.attn.hook_result[:, :, 7] -> blocks.3.hook_mlp_in[:]" in g.edge_ids
    assert "blocks.3.hook_mlp_out[:] -> blocks.3.hook_q_input[:, :, 0]" not in g.edge_ids
    assert "blocks.3.hook_mlp_out[:] -> blocks.4.hook_k_input[:, :, 11]" in g.edge_ids
    assert "blocks.5.hook_v_input[:, :, 2] -> blocks.5.attn.hook_v[:, :, 2]" in g.edge_ids


def test_index_tensors_agree_with_names():
    g = Graph(ARCHITECTURES["tracr-reverse"])
    for e, (r, s) in enumerate(zip(g.add_receiver.tolist(), g.add_sender.tolist())):
        assert g.dense_index[r, s] == e
        assert g.edge_names[e] == f"{g.senders[s].name} -> {g.receivers[r].name}"
    assert int((g.dense_index >= 0).sum()) == g.n_add
    assert g.edge_names[g.direct_index(2, "k", 0)] == "blocks.2.hook_k_input[:, :, 0] -> blocks.2.attn.hook_k[:, :, 0]"


def test_node_scores_are_max_over_touching_edges():
    g = Graph(ARCHITECTURES["tracr-xproportion"])
    scores = torch.zeros(g.n_edges, dtype=torch.float64)
    e = g.edge_ids["hook_embed[:] -> blocks.0.hook_mlp_in[:]"]
    scores[e] = -3.0
    ns = g.node_scores(scores)
    idx = {n: i for i, n in enumerate(g.roc_nodes)}
    assert ns[idx["hook_embed[:]"]] == 3.0  # |score|, and the MLP input node is not a ROC node
    assert "blocks.0.hook_mlp_in[:]" not in idx
    assert ns[idx["blocks.1.attn.hook_result[:, :, 0]"]] == 0.0


@pytest.mark.parametrize("name", list(ACDC_COUNTS))
def test_cli_graph_random_init(name, capsys):
    assert main(["graph", "--model", name, "--random-init"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edges"] == ACDC_COUNTS[name][3]
    assert out["nodes"] > 0
