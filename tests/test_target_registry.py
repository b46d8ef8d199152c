"""A grad-wrong target registered from outside (issue 15, item 8) gets every gradient site, under
the references each site accepts, and its scores are the gradients of its own loss."""
import copy

import pytest
import torch

from harness.methods import all_methods
from harness.methods.grad_wrong import SITES, ZERO_ONLY
from harness.methods.targets import TARGETS, needs_source_logits, register_target, target_loss
from harness.tasks import get_task


@pytest.fixture
def restored():
    """Put the target registry and grad-wrong's variants back as they were after the test."""
    spec = all_methods()["grad-wrong"]
    saved = {k: copy.copy(getattr(spec, k)) for k in ("variants", "references", "per_example", "chunks_itself",
                                                       "default_variants")}
    rows, targets = dict(spec.grid[0]), dict(TARGETS)
    yield spec
    TARGETS.clear()
    TARGETS.update(targets)
    for k, v in saved.items():
        setattr(spec, k, v)
    spec.grid[0].clear()
    spec.grid[0].update(rows)


@pytest.fixture
def registered(restored):
    """`twice-ldm`: 2 x the seed's loss, reading the source exactly when the seed's does."""

    @register_target("twice-ldm", "twice the seed's loss (a test)",
                     reads_source=lambda data: needs_source_logits("logit-diff-mse", data))
    def twice(logits, data, clean_logits, source_logits):
        return 2 * target_loss("logit-diff-mse", logits, data, clean_logits, source_logits)

    return restored


def test_a_new_target_gets_every_site_with_its_references(registered):
    spec = registered
    assert "twice-ldm" in spec.grid[0] and "twice-ldm" in TARGETS
    for site in SITES:
        v = f"twice-ldm/{site}"
        assert v in spec.variants
        assert spec.references_for(v) == (("zero",) if site in ZERO_ONLY else ("resample", "zero"))
        assert spec.supports_per_example(v) == (not site.startswith("weight"))
        assert (v in spec.chunks_itself) == site.startswith("weight")
    assert "twice-ldm/activation" in spec.default_variants and "twice-ldm/weight-node" not in spec.default_variants


@pytest.mark.parametrize("task_name", ["tracr-reverse", "tracr-xproportion"])  # categorical, numerical
def test_a_new_target_s_scores_are_its_loss_s_gradients(registered, task_name):
    """Twice the loss gives exactly twice the scores at every site (scaling by 2 is exact in
    floating point), through the same paths a built-in target takes, chunked or not."""
    from harness.core.engine import Engine

    task = get_task(task_name)
    engine = Engine(task.load_model("cpu", torch.float64))
    for ablation in ("resample", "zero"):
        data = task.data().with_ablation(ablation)
        for site in SITES:
            if ablation not in registered.references_for(f"twice-ldm/{site}"):
                continue
            for chunk in (None, 2):
                base = registered.run(engine, data, f"logit-diff-mse/{site}", chunk=chunk)
                new = registered.run(engine, data, f"twice-ldm/{site}", chunk=chunk)
                assert base.abs().max() > 0, (site, ablation)
                assert torch.equal(new, 2 * base), (site, ablation, chunk)


def test_bad_target_names_and_duplicates_are_refused():
    with pytest.raises(ValueError, match="without '/'"):
        register_target("a/b", "x")
    with pytest.raises(ValueError, match="already registered"):
        register_target("uniform", "x")(lambda *a: None)


def test_a_target_that_reads_the_source_without_declaring_it_is_told_how_to_fix_it(restored):
    register_target("reads-undeclared", "a test")(lambda logits, data, clean, source: (logits - source[..., :1]).sum())
    logits = torch.zeros(2, 3, 1)
    with pytest.raises(TypeError, match="reads_source=True"):
        target_loss("reads-undeclared", logits, get_task("tracr-xproportion").data(), logits, None)


def test_the_registry_is_put_back(restored):
    """Guards the fixture the tests above rely on: nothing they register outlives them."""
    assert "twice-ldm" not in TARGETS and not any(v.startswith("twice-ldm/") for v in restored.variants)


def test_the_readme_s_target_example_registers_and_runs(restored):
    import re
    from pathlib import Path

    from harness.core.engine import Engine

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "register_target" in b)
    exec(block, {})
    task = get_task("tracr-reverse")
    engine = Engine(task.load_model("cpu", torch.float64))
    for site in SITES:
        assert f"flat-logits/{site}" in restored.variants
    scores = restored.run(engine, task.data().with_ablation("zero"), "flat-logits/weight-edge")
    assert scores.shape == (engine.graph.n_edges,) and scores.abs().max() > 0
