"""Faithfulness curves: endpoints are exact, and a ranking that puts the true circuit first keeps
the behaviour sooner than one that puts it last."""
import torch

from harness.core.engine import Engine
from harness.eval.faithfulness import faithfulness


def test_endpoints_and_ground_truth_first_beats_last(tracr_tasks):
    t = tracr_tasks["tracr-reverse"]
    e = Engine(t.load_model(dtype=torch.float64))
    d = t.data(ablation="zero")
    gt = t.ground_truths()["acdc"].edge_mask(e.graph)
    first = faithfulness(e, d, gt.double() + 0.01 * torch.rand(e.graph.n_edges, dtype=torch.float64))
    last = faithfulness(e, d, (~gt).double())
    for r in (first, last):
        assert r["fractions"][0] == 0 and r["fractions"][-1] == 1
        assert abs(r["f"][0]) < 1e-9 and abs(r["f"][-1] - 1) < 1e-9
    assert first["cpr"] > last["cpr"] and first["cmd"] < last["cmd"]
    # ACDC's circuit is sufficient under zero ablation: keeping its 15 edges restores the output
    sizes = [round(x * e.graph.n_edges) for x in first["fractions"]]
    i = next(j for j, n in enumerate(sizes) if n >= int(gt.sum()))
    assert first["f"][i] > 0.99


def test_examples_in_chunks_give_the_same_curve(tracr_tasks):
    """The metric is a mean over examples, so evaluating them a few at a time (how large models
    keep faithfulness within memory) gives the batch's curve."""
    t = tracr_tasks["tracr-reverse"]
    e = Engine(t.load_model(dtype=torch.float64))
    d = t.data(ablation="resample")
    scores = torch.rand(e.graph.n_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = faithfulness(e, d, scores)
    for step in (1, 4):
        part = faithfulness(e, d, scores, examples_per_pass=step)
        assert part["fractions"] == whole["fractions"]
        assert torch.allclose(torch.tensor(part["metric"]), torch.tensor(whole["metric"]), atol=1e-12, rtol=1e-12)
        assert abs(part["cpr"] - whole["cpr"]) < 1e-9 and abs(part["cmd"] - whole["cmd"]) < 1e-9
