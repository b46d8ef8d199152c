"""grad-wrong at its floor (issue 14, item 5): the clean run it differentiates gives the clean
logits, and the source run is made once, only where the site or the target reads it."""
import pytest
import torch

from harness.bench.counting import CountingEngine
from harness.methods import all_methods
from harness.methods.targets import TARGETS, needs_source_logits
from harness.tasks import get_task


def _forwards(engine, name, data, variant):
    engine.arm()
    all_methods()[name].run(engine, data, variant, seed=0)
    return engine.forwards, engine.patched


@pytest.mark.parametrize("task_name", ["tracr-ioi", "tracr-xproportion"])  # categorical, numerical
@pytest.mark.parametrize("ablation", ["resample", "zero"])
def test_the_activation_site_runs_what_eap_runs(task_name, ablation):
    """EAP noising's floor: the source run (one no-grad forward, or the zero cache) and one traced
    clean forward. A target that reads the source's logits under the zero reference adds the one
    fully patched forward that gives them; nothing else runs."""
    task = get_task(task_name)
    engine = CountingEngine(task.load_model("cpu", torch.float64))
    data = task.data().with_ablation(ablation)
    floor = _forwards(engine, "eap", data, "noising")
    for target in TARGETS:
        extra = int(ablation == "zero" and needs_source_logits(target, data))
        assert _forwards(engine, "grad-wrong", data, f"{target}/activation") == (floor[0] + extra, floor[1] + extra), target


def test_weight_sites_make_the_source_run_only_for_targets_that_read_it():
    task = get_task("tracr-xproportion")  # numerical: logit-diff-mse and counterfactual read the source
    engine = CountingEngine(task.load_model("cpu", torch.float64))
    data = task.data().with_ablation("zero")
    # the weight sites' own forward runs on a copy of the weights (not counted); the source's is
    needs = {t: _forwards(engine, "grad-wrong", data, f"{t}/weight-node")[0] > 0 for t in TARGETS}
    assert needs == {t: needs_source_logits(t, data) for t in TARGETS}
    assert needs["logit-diff-mse"] and not needs["uniform"]
