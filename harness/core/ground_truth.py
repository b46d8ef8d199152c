"""Ground-truth circuits stored as data files under `ground_truth/`, shipped as `harness.ground_truth`.

One JSON file per (task, variant): `ground_truth/<task>.<variant>.json` with keys
`task`, `variant`, `graph` (architecture name), `source` (provenance), `description`, and
`edges`: a list of [sender, receiver] node names of the graph (counted edges only; ACDC's
placeholder edges carry no information). Files are validated against the graph when a mask is
built: a malformed file or an unknown node is an error that names the file and the entry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from harness.core.graph import Graph

REQUIRED_KEYS = ("task", "variant", "graph", "source", "edges")


class GroundTruthError(ValueError):
    pass


def ground_truth_dir() -> Path:
    """The folder of stored ground truths: CIRCUIT_BENCH_GROUND_TRUTH if set, else the package
    data `harness.ground_truth` (an installed copy, or the checkout's ground_truth/ when installed
    editable or run from the checkout)."""
    env = os.environ.get("CIRCUIT_BENCH_GROUND_TRUTH")
    if env:
        return Path(env)
    try:
        return Path(str(resources.files("harness.ground_truth")))
    except ModuleNotFoundError:  # run from a checkout that is not installed (or an old editable install)
        checkout = Path(__file__).resolve().parents[2] / "ground_truth"
        if checkout.is_dir():
            return checkout
        raise GroundTruthError("the package's ground-truth data (harness.ground_truth) is missing: "
                               "reinstall circuit-bench, or set CIRCUIT_BENCH_GROUND_TRUTH to a folder of ground truths") from None


@dataclass
class GroundTruth:
    task: str
    variant: str
    graph: str
    source: str
    edges: list
    description: str = ""
    path: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def edge_mask(self, graph: Graph) -> torch.Tensor:
        """Bool [n_edges] over the graph's counted edges; unknown nodes raise GroundTruthError."""
        if graph.cfg.name != self.graph and not graph.cfg.name.startswith(self.graph):
            raise GroundTruthError(f"{self.path}: ground truth is for graph {self.graph!r}, not {graph.cfg.name!r}")
        nodes = set(graph.all_nodes)
        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        for i, (s, r) in enumerate(self.edges):
            for n in (s, r):
                if n not in nodes:
                    raise GroundTruthError(f"{self.path}: edge #{i} [{s!r}, {r!r}]: node {n!r} is not in the {graph.cfg.name} graph")
            j = graph.edge_ids.get(f"{s} -> {r}")
            if j is None:
                raise GroundTruthError(f"{self.path}: edge #{i} [{s!r}, {r!r}] is not an edge of the {graph.cfg.name} graph")
            mask[j] = True
        return mask

    def node_mask(self, graph: Graph) -> torch.Tensor:
        return graph.nodes_touched(self.edge_mask(graph))


def load_ground_truth(path) -> GroundTruth:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GroundTruthError(f"{path}: ground-truth file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GroundTruthError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    except json.JSONDecodeError as e:
        raise GroundTruthError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise GroundTruthError(f"{path}: expected a JSON object with keys {REQUIRED_KEYS}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise GroundTruthError(f"{path}: missing key(s) {missing}")
    wrong_type = [k for k in ("task", "variant", "graph", "source") if not isinstance(data[k], str)]
    if wrong_type:
        raise GroundTruthError(f"{path}: {', '.join(wrong_type)} must be text")
    edges = data["edges"]
    if not isinstance(edges, list):
        raise GroundTruthError(f"{path}: 'edges' must be a list of [sender, receiver] pairs")
    for i, e in enumerate(edges):
        if not (isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)):
            raise GroundTruthError(f"{path}: edge #{i} {e!r} is not a [sender, receiver] pair of node names")
    if len({tuple(e) for e in edges}) != len(edges):
        raise GroundTruthError(f"{path}: duplicate edges")
    extra = {k: v for k, v in data.items() if k not in REQUIRED_KEYS + ("description",)}
    return GroundTruth(
        task=data["task"], variant=data["variant"], graph=data["graph"], source=data["source"],
        edges=[tuple(e) for e in edges], description=data.get("description", ""), path=str(path), extra=extra,
    )


def ground_truth_paths(task: str, directory=None) -> dict:
    """variant -> path of every `<task>.<variant>.json` file."""
    d = Path(directory) if directory else ground_truth_dir()
    out = {}
    for p in sorted(d.glob(f"{task}.*.json")):
        variant = p.name[len(task) + 1 : -len(".json")]
        if "." not in variant:
            out[variant] = p
    return out


def read_ground_truths(task: str, directory=None) -> tuple:
    """(variant -> GroundTruth, variant -> one-line problem): a broken file is reported, and does
    not keep the task's other ground truths from being used."""
    good, problems = {}, {}
    for variant, p in ground_truth_paths(task, directory).items():
        try:
            gt = load_ground_truth(p)
        except GroundTruthError as e:
            problems[variant] = f"{e} (fix or remove the file)"
            continue
        good[gt.variant] = gt
    return good, problems


def ground_truths_for(task: str, directory=None) -> dict:
    """variant -> GroundTruth for every `<task>.<variant>.json` file; a broken one raises."""
    good, problems = read_ground_truths(task, directory)
    if problems:
        raise GroundTruthError(next(iter(problems.values())))
    return good


def save_ground_truth(gt: GroundTruth, directory=None) -> Path:
    d = Path(directory) if directory else ground_truth_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{gt.task}.{gt.variant}.json"
    body = {"task": gt.task, "variant": gt.variant, "graph": gt.graph, "source": gt.source, "description": gt.description}
    body.update(gt.extra)
    body["edges"] = [list(e) for e in gt.edges]
    text = json.dumps(body, indent=1)
    path.write_text(text + "\n")
    return path


def _acdc_node(hook: str, index) -> str:
    if index is None or index == [None]:
        return f"{hook}[:]"
    if len(index) == 3 and index[0] is None and index[1] is None:
        return f"{hook}[:, :, {index[2]}]"
    raise GroundTruthError(f"unexpected ACDC index {index!r} on {hook}")


def from_acdc_json(entry: dict, task: str, graph: str, source: str, description: str = "") -> GroundTruth:
    """Convert one task of `acdc-ground-truth.json` (ACDC's own ground-truth functions, run and
    dumped receiver-first) into our sender -> receiver names, dropping placeholder edges."""
    edges = []
    for e in entry["edges"]:
        if not e.get("counted_in_roc", e["edge_type"] != "PLACEHOLDER"):
            continue
        edges.append((_acdc_node(e["sender"], e["sender_index"]), _acdc_node(e["receiver"], e["receiver_index"])))
    edges.sort()
    return GroundTruth(task, "acdc", graph, source, edges, description,
                       extra={"acdc_counted_edges": entry.get("gt_edges_counted"), "acdc_nodes": entry.get("gt_nodes")})
