"""Extension points (issue 15, item 8): a package installed beside circuit-bench adds a method,
a task and a grad-wrong target through the `circuit_bench.plugins` entry point, and the CLI
lists and runs them with no `--plugin`. The package is made here: a module and the `.dist-info`
folder an installer writes (METADATA, entry_points.txt), which is what importlib.metadata reads."""
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

PACKAGE = textwrap.dedent('''
    """Registers one method, one task and one grad-wrong target when imported."""
    from pathlib import Path

    import torch

    from harness.core import objectives
    from harness.core.data import Metric, TaskData
    from harness.core.objectives import masked_mean
    from harness.core.weights import ModelConfig, random_weights
    from harness.methods import register
    from harness.methods.targets import register_target
    from harness.tasks import Task, register_task

    CFG = ModelConfig("pkg-tiny", n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=7, n_ctx=5, d_mlp=8)


    @register("pkg-later-receiver", "edges into later receivers score higher", {"plain": ({}, "receiver index")})
    def later_receiver(engine, data):
        g = engine.graph
        return torch.cat([g.add_receiver.double() + 1, torch.zeros(g.n_direct, dtype=torch.float64)])


    @register_target("pkg-flat-logits", "squared logits: every answer as likely as every other")
    def flat_logits(logits, data, clean_logits, source_logits):
        return masked_mean(logits.pow(2).mean(-1), data.pos_mask.to(logits.device)).mean()


    @register_task
    class PackagedToy(Task):
        name = "pkg-toy"
        model = "pkg-tiny"
        description = "a random two-layer model, from an installed package"
        ground_truth_dir = Path(__file__).parent / "ground_truth"

        def load_model(self, device="cpu", dtype=torch.float32, weights_dir=None):
            return random_weights(CFG, seed=0).to(device, dtype)

        def data(self, split="validation", seed=0, ablation="resample"):
            g = torch.Generator().manual_seed(seed)
            clean, corrupted, correct = torch.randint(0, 7, (3, 6, 5), generator=g)
            pos_mask = torch.zeros(6, 5, dtype=torch.bool)
            pos_mask[:, -1] = True
            return TaskData(clean, corrupted, pos_mask, Metric("l2", objectives.l2, {"pos_mask": "pos_mask"}),
                            correct=correct, wrong=((correct + 1) % 7).unsqueeze(-1), ablation=ablation)
''')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the package `cb_pkg_demo` (with its ground truth) and its dist-info."""
    from harness.core.graph import Graph
    from harness.core.weights import ModelConfig

    root = tmp_path_factory.mktemp("site")
    pkg = root / "cb_pkg_demo"
    (pkg / "ground_truth").mkdir(parents=True)
    (pkg / "__init__.py").write_text(PACKAGE)
    graph = Graph(ModelConfig("pkg-tiny", n_layers=2, n_heads=2, d_model=8, d_head=4, d_vocab=7, n_ctx=5, d_mlp=8))
    circuit = graph.edge_endpoints[graph.n_add - 4: graph.n_add]
    (pkg / "ground_truth" / "pkg-toy.handmade.json").write_text(json.dumps(
        {"task": "pkg-toy", "variant": "handmade", "graph": "pkg-tiny", "source": "written by this test",
         "edges": [list(e) for e in circuit]}))
    info = root / "cb_pkg_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-pkg-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circuit_bench.plugins]\ndemo = cb_pkg_demo\n")
    return root


def _cli(site, *args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_an_installed_package_s_method_task_and_target_are_listed(site, tmp_path):
    done = _cli(site, "list", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert "pkg-toy" in {t["name"] for t in listed["tasks"]}
    methods = {m["name"]: m for m in listed["methods"]}
    assert "pkg-later-receiver" in methods
    gw = methods["grad-wrong"]
    assert "pkg-flat-logits" in gw["grid"]["rows"]
    names = {v["name"] for v in gw["variants"]}
    assert {f"pkg-flat-logits/{s}" for s in gw["grid"]["columns"]} <= names  # every gradient site
    # and the plain listing shows the new target as a row of the grid
    text = _cli(site, "list", cwd=tmp_path).stdout
    assert any(line.split()[:1] == ["pkg-flat-logits"] for line in text.splitlines())


def test_an_installed_package_s_entries_run_and_score(site, tmp_path):
    out = tmp_path / "out"
    done = _cli(site, "run", "--tasks", "pkg-toy", "--methods", "pkg-later-receiver,grad-wrong",
                "--variants", "plain", "pkg-flat-logits/activation", "pkg-flat-logits/weight-node",
                "--controls", "trained", "--bootstrap", "0", "--no-faithfulness", "--no-progress", "--out", str(out),
                cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    df = pd.read_csv(out / "results.csv")
    assert set(df["status"]) == {"ok"} and set(df["ground_truth"]) == {"handmade"}
    runs = set(zip(df["method"], df["variant"], df["ablation"]))
    assert runs == {("pkg-later-receiver", "plain", "resample"), ("pkg-later-receiver", "plain", "zero"),
                    ("grad-wrong", "pkg-flat-logits/activation", "resample"),
                    ("grad-wrong", "pkg-flat-logits/activation", "zero"),
                    ("grad-wrong", "pkg-flat-logits/weight-node", "zero")}  # dL/dW sites: zero reference only


def test_a_package_whose_plugin_fails_to_import_is_one_warning(tmp_path):
    root = tmp_path / "site"
    (root / "cb_broken").mkdir(parents=True)
    (root / "cb_broken" / "__init__.py").write_text("raise RuntimeError('this plugin is broken')\n")
    info = root / "cb_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circuit_bench.plugins]\nbroken = cb_broken\n")
    done = _cli(root, "list", cwd=tmp_path)
    assert done.returncode == 0
    warning = [line for line in done.stderr.splitlines() if "cb-broken" in line]
    assert len(warning) == 1 and "this plugin is broken" in warning[0] and warning[0].startswith("circuit-bench: warning:")
    assert "grad-wrong" in done.stdout  # the rest of the CLI works
