"""Adding a method and a task from outside the package, as the README's "Extending" section
shows: one plugin file (a method and a task) plus one ground-truth file, run through the CLI."""
import json
import textwrap

import pandas as pd
import pytest
import torch

PLUGIN = textwrap.dedent('''
    """A method and a task that live outside circuit-bench."""
    from pathlib import Path

    import torch

    from harness.core import objectives
    from harness.core.data import Metric, TaskData
    from harness.core.weights import ModelConfig, random_weights
    from harness.methods import register
    from harness.tasks import Task, register_task

    CFG = ModelConfig("outside-tiny", n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=7, n_ctx=5, d_mlp=8)


    @register("later-receiver", "toy: edges into later receivers score higher",
              {"plain": ({}, "receiver index as the score")}, per_example=False)
    def later_receiver(engine, data):
        g = engine.graph
        add = g.add_receiver.double() + 1
        return torch.cat([add, torch.zeros(g.n_direct, dtype=torch.float64)])


    @register_task
    class OutsideToy(Task):
        name = "outside-toy"
        model = "outside-tiny"
        description = "a random two-layer model and random prompts, from a plugin"
        ground_truth_dir = Path(__file__).parent / "ground_truth"

        def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
            return random_weights(CFG, seed=0).to(device, dtype)

        def data(self, split="validation", seed=0, ablation="resample"):
            g = torch.Generator().manual_seed(seed)
            clean = torch.randint(0, 7, (4, 5), generator=g)
            corrupted = torch.randint(0, 7, (4, 5), generator=g)
            pos_mask = torch.zeros(4, 5, dtype=torch.bool)
            pos_mask[:, -1] = True
            correct = torch.randint(0, 7, (4, 5), generator=g)
            wrong = ((correct + 1) % 7).unsqueeze(-1)
            return TaskData(clean, corrupted, pos_mask, Metric("l2", objectives.l2, {"pos_mask": "pos_mask"}),
                            correct=correct, wrong=wrong, ablation=ablation)
''')


@pytest.fixture
def plugin(tmp_path):
    from harness.core.graph import Graph

    folder = tmp_path / "myplugin"
    (folder / "ground_truth").mkdir(parents=True)
    (folder / "toy_plugin.py").write_text(PLUGIN)
    ns = {}
    exec(PLUGIN.split("@register(")[0].replace('"""A method and a task that live outside circuit-bench."""', ""), ns)
    graph = Graph(ns["CFG"])
    circuit = graph.edge_endpoints[graph.n_add - 4 : graph.n_add]  # the last ADDITION edges: into the output
    (folder / "ground_truth" / "outside-toy.handmade.json").write_text(json.dumps(
        {"task": "outside-toy", "variant": "handmade", "graph": "outside-tiny", "source": "written by this test",
         "edges": [list(e) for e in circuit]}))
    yield folder / "toy_plugin.py", graph, circuit
    from harness.methods.registry import METHODS
    from harness.tasks import TASKS

    METHODS.pop("later-receiver", None)
    TASKS.pop("outside-toy", None)


def test_a_method_and_a_task_from_outside_run_and_score(plugin, tmp_path):
    from harness.cli import main
    from harness.eval.scoring import score_edges_and_nodes

    path, graph, circuit = plugin
    out = tmp_path / "out"
    rc = main(["--plugin", str(path), "run", "--tasks", "outside-toy", "--methods", "later-receiver", "eap", "random",
               "--out", str(out), "--no-progress", "--bootstrap", "0", "--no-faithfulness"])
    assert rc == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df["method"]) == {"later-receiver", "eap", "random"} and set(df["status"]) == {"ok"}
    row = df[(df["method"] == "later-receiver") & (df["level"] == "edge")].iloc[0]
    assert row["ground_truth"] == "handmade" and row["n_positive"] == len(circuit)
    # the stored AUC is that of the plugin's scores against the plugin's ground truth
    g = graph
    toy_scores = torch.cat([g.add_receiver.double() + 1, torch.zeros(g.n_direct, dtype=torch.float64)])
    want = score_edges_and_nodes(g, toy_scores, g.edge_mask_from_names(circuit))["edge"].auc
    assert row["auc"] == pytest.approx(want)
    assert want > 0.9  # edges into the output are the latest receivers: the toy ranks them first


def test_list_shows_plugin_entries(plugin, capsys):
    from harness.cli import main

    path, _, _ = plugin
    assert main(["--plugin", str(path), "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "outside-toy" in {t["name"] for t in listed["tasks"]}
    assert "later-receiver" in {m["name"] for m in listed["methods"]}


def test_a_missing_plugin_is_a_one_line_error(tmp_path, capsys):
    from harness.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--plugin", str(tmp_path / "nope.py"), "list"])
    assert e.value.code == 2 and "nope.py" in capsys.readouterr().err
