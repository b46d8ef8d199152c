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


def _vocab(data) -> int:
    """An output width every answer index of `data` fits in."""
    if not data.categorical:
        return 1
    fields = [data.correct, data.wrong, data.counterfactual] + list(data.metric.const.values())
    return 1 + max(int(t.max()) for t in fields if isinstance(t, torch.Tensor) and not t.is_floating_point())


@pytest.mark.parametrize("task_name", ["tracr-reverse", "tracr-xproportion", "tracr-induction", "tracr-docstring",
                                       "ioi", "greaterthan", "seed-pair"])
def test_every_target_and_objective_reads_only_the_scored_columns(task_name):
    """What lets every traced run unembed only `TaskData.scored` columns: each target and each
    objective of the logits at those columns, scored with the data there, equals its value on the
    full logits (random logits, which would expose any read of an unscored column)."""
    from harness.core.objectives import OBJECTIVES, evaluate
    from harness.methods.targets import target_loss

    data = get_task(task_name).data()
    data = data.subset(torch.arange(min(data.n, 6)))
    cols, scored = data.scored()
    assert len(cols) < data.clean.shape[1]
    g = torch.Generator().manual_seed(0)
    V = _vocab(data)
    logits, clean, source = (torch.randn(data.n, data.clean.shape[1], V, generator=g, dtype=torch.float64)
                             for _ in range(3))
    at = lambda t: t[:, cols]  # noqa: E731
    for target in TARGETS:
        want = target_loss(target, logits, data, clean, source)
        torch.testing.assert_close(target_loss(target, at(logits), scored, at(clean), at(source)), want,
                                   rtol=1e-12, atol=1e-12, msg=target)
    for name in OBJECTIVES:
        want = evaluate(name, logits, clean, data)
        torch.testing.assert_close(evaluate(name, at(logits), at(clean), scored), want, rtol=1e-12, atol=1e-12,
                                   msg=name)
