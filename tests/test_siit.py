"""SIIT training (harness.programs.siit) and the shipped trained models
(harness.tasks.trained_tasks): losses fall, training is seeded, stored validation figures are
what the stored weights give, ground truths fit their graphs, and every shipped model passes."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch

from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.programs import siit
from harness.tasks import TASKS, get_task
from harness.tasks import trained_tasks as tt

SHIPPED = [c for c in tt.cards() if c.get("shipped")]


def _pair(base="tracr-xproportion", seed=0, tc=siit.TrainConfig()):
    task = tt.base_task(base)
    cfg = siit.ll_config(task.tracr().weights.cfg, "t", tc)
    return task, tt.make_pair(task, siit.init_weights(cfg, seed))


def test_ll_config_is_wider_with_ordinary_parts():
    task = tt.base_task("tracr-reverse")
    hl = task.tracr().weights.cfg
    cfg = siit.ll_config(hl, "x")
    assert cfg.d_model > hl.d_model and cfg.d_model % cfg.n_heads == 0 and cfg.n_heads >= 4
    assert (cfg.n_layers, cfg.d_vocab, cfg.vocab_out, cfg.n_ctx, cfg.causal) == (hl.n_layers, hl.d_vocab, hl.vocab_out,
                                                                                  hl.n_ctx, hl.causal)
    assert cfg.normalization_type == "LN" and cfg.act_fn == "gelu_new" and cfg.split_embed
    w = siit.init_weights(cfg, 0)
    std = w["blocks.0.attn.W_Q"].std().item()
    assert abs(std - 0.8 / cfg.d_model ** 0.5) < 0.1 * std  # TransformerLens's initializer_range
    assert torch.equal(w["blocks.0.ln1.w"], torch.ones(cfg.d_model))


def test_correspondence_holds_the_circuit_heads_and_mlps_at_their_places():
    task, pair = _pair("tracr-reverse")
    names = {s.name for s in pair.hl_engine.graph.senders}
    gt_senders = {s for s, _ in task.ground_truths()["structural"].edges} & names
    assert set(pair.corr.nodes) == {n for n in gt_senders if "hook_embed" not in n and "pos_embed" not in n}
    ll = pair.ll_engine.graph.senders
    assert [ll[i].name for i in pair.corr.ll] == pair.corr.nodes
    assert not set(pair.corr.ll) & set(pair.corr.non_circuit)
    assert len(pair.corr.ll) + len(pair.corr.non_circuit) == sum(s.kind != "input" for s in ll)


def test_an_intervention_takes_the_source_output_of_exactly_that_node():
    """ll_out with a held node equals the engine's forward with every edge out of it patched to
    the source (how the engine defines an intervention)."""
    task, pair = _pair()
    d = task.data("validation")
    e = pair.ll_engine
    j = pair.corr.ll[0]
    src = e.cache(d.corrupted)
    patch = torch.zeros(e.graph.n_edges)
    patch[: e.graph.n_add][e.graph.add_sender == j] = 1
    want = e.run(d.clean, patch, src, positions=pair.positions).logits
    torch.testing.assert_close(pair.ll_out(d.clean, src.senders, [j]), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base,options", [("tracr-xproportion", {}), ("tracr-reverse", {}),
                                          ("tracr-xproportion", {"step_per_loss": True}),
                                          ("tracr-xproportion", {"strict_grad": True}),
                                          ("tracr-xproportion", {"strict_logits": 0.01})])
def test_a_few_steps_decrease_every_loss(base, options):
    task, pair = _pair(base)
    pool = tt.training_inputs(task)
    g = torch.Generator().manual_seed(3)
    b, s = pool[torch.randint(len(pool), (128,), generator=g)], pool[torch.randint(len(pool), (128,), generator=g)]
    def losses():  # IIT on every HL node, strict on every non-circuit node, one at a time (as trained)
        with torch.no_grad():
            iit = [float(pair.losses(b, s, i, [])["iit"]) for i in range(len(pair.corr.nodes))]
            strict = [float(pair.losses(b, s, 0, [j])["strict"]) for j in pair.corr.non_circuit]
            return {"iit": sum(iit) / len(iit), "behaviour": float(pair.losses(b, s, 0, [])["behaviour"]),
                    "strict": sum(strict) / len(strict)}

    before = losses()
    siit.train(pair, pool, b[:16], s[:16], siit.TrainConfig(max_steps=100, eval_every=1000, **options))
    after = losses()
    for k in ("iit", "behaviour", "strict"):
        assert after[k] < 0.7 * before[k], (k, before, after)


def test_strict_grad_reaches_the_ablated_node_through_its_output_on_the_source():
    """InterpBench's strict loss reads the ablated node's cached (detached) source output, so the
    node's own weights get no gradient from it; with strict_grad they do, and the loss's value is
    the same."""
    task, pair = _pair("tracr-reverse")
    pool = tt.training_inputs(task)
    g = torch.Generator().manual_seed(1)
    b, s = pool[torch.randint(len(pool), (32,), generator=g)], pool[torch.randint(len(pool), (32,), generator=g)]
    senders = pair.ll_engine.graph.senders
    j = next(i for i in pair.corr.non_circuit if senders[i].kind == "head")
    w_o = pair.ll.params[f"blocks.{senders[j].layer}.attn.W_O"]
    values = []
    for grad in (False, True):
        w_o.requires_grad_(True)
        try:
            loss = pair.losses(b, s, 0, [j], strict_grad=grad)["strict"]
            (dw,) = torch.autograd.grad(loss, w_o)
        finally:
            w_o.requires_grad_(False)
        assert bool(dw[senders[j].head].abs().sum() > 0) == grad
        values.append(loss.detach())
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-6)


def test_strict_logits_is_the_mean_squared_change_of_the_logits_under_the_ablation_less_their_common_shift():
    task, pair = _pair("tracr-reverse")
    pool = tt.training_inputs(task)
    g = torch.Generator().manual_seed(4)
    b, s = pool[torch.randint(len(pool), (24,), generator=g)], pool[torch.randint(len(pool), (24,), generator=g)]
    j = pair.corr.non_circuit[-1]
    got = pair.losses(b, s, 0, [j], strict_logits=True)
    src = pair.ll_engine.cache(s).senders
    change = pair.ll_out(b, src, [j]) - pair.ll_out(b)
    want = ((change - change.mean(-1, keepdim=True)) ** 2).mean()  # less the shift every class shares
    torch.testing.assert_close(got["strict_logits"], want)
    assert float(want) > 0
    plain = pair.losses(b, s, 0, [j])  # the same three losses, whichever path computes them
    for k in ("iit", "behaviour", "strict"):
        torch.testing.assert_close(got[k], plain[k], rtol=1e-5, atol=1e-6)


def test_training_is_seeded():
    runs = []
    for _ in range(2):
        task, pair = _pair(seed=5)
        pool = tt.training_inputs(task)
        siit.train(pair, pool, pool[:8], pool[8:16], siit.TrainConfig(max_steps=5, eval_every=1000, seed=5))
        runs.append(pair.ll.params)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], siit.init_weights(pair.ll.cfg, 5).params[k]) for k in runs[0])


def test_pass_or_fail_names_the_missed_threshold():
    good = {"accuracy": 1.0, "iia": 0.99, "strict": 0.99, "strict_min": 0.9, "strict_effect_max": 0.01, "shift_share": 0.01}
    assert tt.passes(good) == []
    missed = tt.passes({**good, "iia": 0.5, "strict_effect_max": 0.2})
    assert len(missed) == 2 and missed[0].startswith("iia 0.5000") and "strict_effect_max" in missed[1]
    assert tt.passes({**good, "shift_share": 0.9}) == ["shift_share 0.9000 (needs <= 0.25)"]
    assert tt.passes({**good, "strict_min": 0.8}) == ["strict_min 0.8000 (needs >= 0.85)"]  # one node the mean hides


def test_shift_share_is_the_part_of_the_whole_change_every_class_shares():
    """A constant added to every class's logit, different per input, changes no probability; the
    L2 metric sees it, and validate says how much of the whole change it is."""
    task, pair = _pair("tracr-reverse")
    pool = tt.training_inputs(task)
    g = torch.Generator().manual_seed(2)
    b, s = pool[torch.randint(len(pool), (40,), generator=g)], pool[torch.randint(len(pool), (40,), generator=g)]
    before = pair.validate(b, s)["shift_share"]
    w = pair.ll.params
    gain = torch.zeros_like(w["unembed.W_U"]) + torch.randn(w["unembed.W_U"].shape[0], 1, generator=torch.Generator().manual_seed(0))
    w["unembed.W_U"] += 50 * gain  # every class gets the same input-dependent shift
    after = pair.validate(b, s)
    # (an untrained model's changes are independent across its 3 classes: about 1/3 is shared)
    assert before < 0.6 and after["shift_share"] > 0.95 and "shift_share" in " ".join(tt.passes(after))


FAMILIES = {"tracr-reverse", "tracr-xproportion", "tracr-induction", "tracr-ioi", "tracr-greaterthan", "tracr-docstring"}


def test_ten_suite_programs_are_shipped_and_registered():
    bases = {c["base_task"] for c in SHIPPED}
    assert sum(b.startswith("suite:") for b in bases) >= 10
    for c in SHIPPED:
        assert c["task"] in TASKS and not TASKS[c["task"]].in_default_run
        assert c["command"].startswith(f"circuit-bench train-siit --task {c['base_task']} --seed {c['train']['seed']}")


@pytest.mark.xfail(strict=True, reason="issue 18 asks for all six task families; the IOI and Docstring analogues "
                                       "have not passed validation (docs/trained.md#shipped-models)")
def test_the_six_task_families_are_shipped():
    assert FAMILIES <= {c["base_task"] for c in SHIPPED}


@pytest.mark.parametrize("card", SHIPPED, ids=[c["task"] for c in SHIPPED])
def test_stored_validation_is_what_the_weights_give_and_passes(card):
    task = get_task(card["task"])
    w = tt.load_trained(card["task"])
    figs = tt.validation(task.base_task(), w, card["train"]["seed"])
    stored = card["validation"]
    for k in ("accuracy", "iia", "iia_min", "strict", "strict_min", "strict_effect_max", "circuit_effect_min", "shift_share"):
        assert figs[k] == pytest.approx(stored[k], abs=2e-6), k
    assert (figs["cases"], figs["iia_cases_per_node"]) == (stored["cases"], stored["iia_cases_per_node"])
    assert tt.passes(figs) == []
    gt = task.ground_truths()[tt.VARIANT]
    mask = gt.edge_mask(Graph(w.cfg))  # validates every name against the trained model's graph
    assert int(mask.sum()) == len(gt.edges) == len(task.base_task().ground_truths()["structural"].edges)
    assert {s for s, _ in gt.edges} >= set(card["correspondence"])


@pytest.mark.parametrize("card", SHIPPED, ids=[c["task"] for c in SHIPPED])
def test_a_trained_task_serves_its_programs_data_to_its_own_model(card):
    task = get_task(card["task"])
    base = task.base_task()
    d, bd = task.data("test"), base.data("test")
    assert torch.equal(d.clean, bd.clean) and torch.equal(d.corrupted, bd.corrupted)
    w = task.load_model(dtype=torch.float64)
    assert w.cfg.normalization_type == "LN" and w.cfg.n_heads >= 4
    logits = Engine(w).logits(d.clean)
    assert torch.isfinite(logits).all() and logits.shape[-1] == base.tracr().weights.cfg.vocab_out


def test_cards_are_json_with_training_facts():
    for c in SHIPPED:
        assert c["steps"] >= 1 and c["seconds"] > 0 and c["threads"] == 1
        assert set(tt.SHIP_THRESHOLDS) <= set(c["validation"])
        assert json.loads(json.dumps(c)) == c


@pytest.mark.parametrize("card", SHIPPED, ids=[c["task"] for c in SHIPPED])
def test_every_method_runs_on_every_trained_task(card):
    """Each method's default variants under resample ablation (the reference the models are trained
    for) give a finite score per edge, or a family of circuits, scoreable against the ground truth."""
    from harness.eval.scoring import score_edges_and_nodes
    from harness.methods import CircuitFamily, all_methods

    task = get_task(card["task"])
    e = Engine(task.load_model(dtype=torch.float64))
    data = task.data().with_ablation("resample")
    gt = task.ground_truths()[tt.VARIANT].edge_mask(e.graph)
    for m, spec in all_methods().items():
        opts = {"acdc": {"thresholds": [1e-4, 1e-2]}, "sp": {"epochs": 2, "n_lambdas": 2}}.get(m, {})
        for v in spec.default_variants:
            if "resample" not in spec.references_for(v):
                continue
            out = spec.run(e, data, v, **opts)
            if spec.output == "family":
                assert isinstance(out, CircuitFamily) and out.circuits.shape[1] == e.graph.n_edges, (m, v)
                score_edges_and_nodes(e.graph, out.circuits, gt)
            else:
                assert out.shape == (e.graph.n_edges,) and torch.isfinite(out).all(), (m, v)
                score_edges_and_nodes(e.graph, out, gt)


def test_train_siit_reproduces_a_shipped_model(tmp_path, restore_tasks, capsys):
    """`circuit-bench train-siit` with a shipped card's seed and thread count writes the same
    model, card figures and ground truth again (the smallest shipped program: it stops early).
    Bit for bit on the CPU that trained it (the card's `cpu`); elsewhere float32 kernels sum in
    another order, and training carries that round-off on (docs/trained.md#training), so the weights
    must agree to 1% of the model's largest weight and every validation figure to 1e-3, where another
    recipe (another seed, another draw order) would give wholly different weights."""
    from safetensors.torch import load_file

    from harness.cli import main
    from harness.core.device import cpu_name

    name = "trained-lib-count-3x4"
    card = next(c for c in SHIPPED if c["task"] == name)
    assert card["threads"] == torch.get_num_threads() == 1
    assert main(["train-siit", "--task", card["base_task"], "--seed", str(card["train"]["seed"]), "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert f"{name}: {card['steps']} steps" in capsys.readouterr().out
    new, old = load_file(str(tmp_path / "trained" / f"{name}.safetensors")), tt.load_trained(name).params
    again = json.loads((tmp_path / "trained" / f"{name}.json").read_text())
    assert new.keys() == old.keys() and again["steps"] == card["steps"] and again["cpu"] == cpu_name()
    if card.get("cpu") == cpu_name():
        assert all(torch.equal(new[k], old[k]) for k in new) and again["validation"] == card["validation"]
    else:
        scale = max(float(t.abs().max()) for t in old.values())
        for k in new:
            torch.testing.assert_close(new[k], old[k], rtol=0, atol=0.01 * scale, msg=k)
        figures = [(k, v) for k, v in again["validation"].items() if isinstance(v, float)]
        assert figures and all(abs(v - card["validation"][k]) <= 1e-3 for k, v in figures), figures
    gt = json.loads((tmp_path / f"{name}.correspondence.json").read_text())
    assert [tuple(e) for e in gt["edges"]] == list(get_task(name).ground_truths()[tt.VARIANT].edges)
    assert tt.register_trained(tmp_path) == [name]


def test_a_model_that_misses_a_threshold_is_written_aside_and_not_registered(tmp_path, restore_tasks):
    card = tt.train("suite:lib-count-3x4", siit.TrainConfig(max_steps=2, eval_every=1000), tmp_path)
    assert not card["shipped"] and card["missed"]
    assert (tmp_path / "trained" / "rejected" / "trained-lib-count-3x4.safetensors").exists()
    assert not list(tmp_path.glob("*.json")) and tt.register_trained(tmp_path) == []


def test_analogue_training_inputs_add_random_sequences_only_where_the_program_answers_on_them(monkeypatch):
    ind = tt.base_task("tracr-induction")  # siit_inputs "uniform": no prompt at all
    pool = tt.training_inputs(ind)
    half = (pool.shape[1] - 1) // 2
    repeats = (pool[:, 1 : 1 + half] == pool[:, 1 + half :]).all(1)
    assert ind.siit_inputs == "uniform" and not repeats.any() and len(set(map(tuple, pool.tolist()))) == len(pool)
    doc = tt.base_task("tracr-docstring")  # "prompts-only": its siit_pool of prompts, no uniform sequence
    pool, partner = tt.training_pool(doc)
    assert doc.siit_inputs == "prompts-only" and pool.shape[0] == doc.siit_pool > tt.POOL
    assert (pool[:, 1] == pool[0, 1]).all() and torch.equal(partner, torch.arange(len(pool)) ^ 1)  # "def(" opens each
    monkeypatch.setattr(type(doc), "siit_inputs", "prompts")  # the default rule: a uniform half, as the program
    pool = tt.training_inputs(doc, 4096)  # answers on enough uniform sequences
    prompts = (pool[:, 1] == pool[0, 1]).double().mean()
    assert tt.random_defined(doc) >= tt.RANDOM_MIN_DEFINED and 0.5 <= prompts < 0.6
    gt = tt.base_task("tracr-greaterthan")
    assert tt.random_defined(gt) < tt.RANDOM_MIN_DEFINED
    d = gt.data("validation")
    fixed = (d.clean == d.clean[0]).all(0) & (d.corrupted == d.clean[0]).all(0)  # template tokens
    assert fixed.sum() >= 3 and (tt.training_inputs(gt)[:, fixed] == d.clean[0, fixed]).all()


def test_trained_tasks_run_when_named_or_by_the_preset_beside_their_programs():
    from harness.run.presets import get_preset
    from harness.run.runner import offline_tasks

    names = {c["task"] for c in SHIPPED}
    assert names and not names & set(offline_tasks())
    p = get_preset("trained")
    assert set(p.tasks) == names | {c["base_task"] for c in SHIPPED}
    assert p.options["ablations"] == ("resample",) and p.methods == ()


def test_an_averaged_compiled_output_is_no_label():
    """A categorical Aggregate that selects several values makes tracr's model average their
    one-hots, an output of no program value; only the earlier rule (`mixture_labels`) labels it."""
    task, pair = _pair("tracr-ioi")
    w = task.data("validation")
    base, source = w.clean[:1], w.clean[1:2]  # two prompts with different names
    s_inhibition = next(i for i, n in enumerate(pair.corr.nodes) if n.startswith("blocks.1.attn"))
    out = pair.hl_out(base, source, s_inhibition)  # the base's mover now avoids a name it may not hold
    assert 0.6 < float(out.amax()) < 0.7  # 2/3 S + 1/3 IO: every name of the base is selected
    assert not pair.labels(out)[1].any() and pair.labels(out, siit.MIXTURE)[1].all()
    assert pair.labels(pair.hl_out(base))[1].all()  # the plain output is a one-hot
    ll = pair.ll_out(base).requires_grad_(True)
    loss = pair.loss(ll, out)
    loss.backward()
    assert loss.item() == 0 and not ll.grad.any()  # nothing to learn from, and no NaN
    pair.train_defined = siit.MIXTURE
    assert pair.loss(ll, out).item() > 0


@pytest.mark.parametrize("card", [c for c in SHIPPED if c["config"]["d_vocab_out"] > 1
                                  and c["train"].get("mixture_labels", True)], ids=lambda c: c["task"])
def test_a_card_says_mixture_labels_exactly_when_its_training_saw_them(card):
    """Replays the card's training draws (the pairs and nodes of `siit.train`) on the compiled
    model: the default rule retrains a card's model bit for bit only if no label it used was an
    average; cards trained on such labels say `--mixture-labels`. It covers the cards written before
    the rule existed (no `mixture_labels` in their config) and those that say it: a card whose config
    says `mixture_labels: false` was trained under the one-hot rule itself, so a replay proves nothing."""
    tc = siit.TrainConfig(**card["train"])
    task, pair = _pair(card["base_task"], tc.seed, tc)
    pool = tt.training_inputs(task, seed=tc.seed)
    mixed = 0
    tc = siit.TrainConfig(**{**card["train"], "max_steps": card["steps"]})
    for bi, si, node, _ in siit.draws(tc, len(pool), len(pair.corr.nodes), pair.corr.non_circuit):
        for out in (pair.hl_out(pool[bi]), pair.hl_out(pool[bi], pool[si], node)):
            top = out.amax(-1)
            mixed += int(((top > siit.MIXTURE) & (top <= siit.DEFINED)).sum())
    assert (mixed > 0) == tc.mixture_labels == ("--mixture-labels" in card["command"])


def test_a_blank_compiled_output_trains_toward_uniform_only_with_blank_weight():
    """Where the program selects nothing (IOI's corrupted prompts repeat no name), the compiled
    output is blank, no label; `blank_weight` adds KL(uniform || softmax) there, zero at uniform
    logits, and leaves labelled positions' loss as it was."""
    task, pair = _pair("tracr-ioi")
    w = task.data("validation")
    blank_out, labelled_out = pair.hl_out(w.corrupted[:4]), pair.hl_out(w.clean[:4])
    assert float(blank_out.amax()) < siit.BLANK and not pair.labels(blank_out)[1].any()
    g = torch.Generator().manual_seed(0)
    ll = (3 * torch.randn(blank_out.shape, generator=g, dtype=blank_out.dtype)).requires_grad_(True)
    loss = pair.loss(ll, blank_out)
    loss.backward()
    assert loss.item() == 0 and not ll.grad.any()  # the default: nothing to learn there
    plain = pair.loss(ll, labelled_out).item()
    pair.blank_weight = 2.0
    logp = torch.log_softmax(ll.detach(), -1)
    uniform = torch.full_like(logp, 1 / logp.shape[-1])
    kl = torch.nn.functional.kl_div(logp, uniform, reduction="none").sum(-1).mean()
    torch.testing.assert_close(pair.loss(ll, blank_out), 2.0 * kl.float())
    assert kl > 0.5
    assert pair.loss(torch.zeros_like(ll), blank_out).item() == pytest.approx(0, abs=1e-6)
    assert pair.loss(ll, labelled_out).item() == plain  # one-hot outputs are not blank


def test_train_siit_blank_weight_reaches_the_training_and_the_cards_command(tmp_path, restore_tasks):
    from harness.cli import main

    assert main(["train-siit", "--task", "suite:lib-count-3x4", "--max-steps", "2", "--blank-weight", "0.5",
                 "--out", str(tmp_path), "--quiet"]) == 1  # two steps: rejected
    card = json.loads((tmp_path / "trained" / "rejected" / "trained-lib-count-3x4.json").read_text())
    assert card["train"]["blank_weight"] == 0.5 and card["command"].endswith("--max-steps 2 --blank-weight 0.5")


def _parts(strict: float, behaviour: float, **more) -> dict:
    return {"strict": torch.tensor(strict), "behaviour": torch.tensor(behaviour),
            **{k: torch.tensor(v) for k, v in more.items()}}


def test_strict_focus_draws_the_nodes_whose_ablation_costs_most_in_training():
    """StrictFocus: a node's cost is a running mean of its strict loss above the batch's behaviour
    loss (plus the logit term); unseen nodes count as the costliest seen; a node that costs nothing
    is never drawn by cost; share 0 keeps every uniform draw."""
    f = siit.StrictFocus([3, 5, 7], share=1.0, seed=0)
    assert {f.pick([5])[0] for _ in range(200)} == {3, 5, 7}  # nothing seen yet: every node alike
    f.observe([3], _parts(2.0, 0.5))
    f.observe([5], _parts(0.4, 0.5))  # ablating 5 cost nothing: clamped to 0
    assert f.cost == {3: 1.5, 5: 0.0, 7: None}
    picks = [f.pick([5])[0] for _ in range(400)]
    assert set(picks) == {3, 7}  # 7, unseen, counts as costly as 3; 5 never
    f.observe([3], _parts(0.5, 0.5, strict_logits=0.2))
    assert f.cost[3] == pytest.approx(0.9 * 1.5 + 0.1 * 0.2)
    f.observe([3, 5], _parts(9.0, 0.0))  # several nodes at once: no single node to charge
    assert f.cost[3] == pytest.approx(0.9 * 1.5 + 0.1 * 0.2)
    g = siit.StrictFocus([3, 5, 7], share=0.0, seed=0)
    g.observe([3], _parts(5.0, 0.0))
    assert all(g.pick([5]) == [5] for _ in range(100))
    half = siit.StrictFocus([3, 5, 7], share=0.5, seed=1)
    half.cost = {3: 1.0, 5: 0.0, 7: 0.0}
    picks = [half.pick([5])[0] for _ in range(1000)]
    assert 0.4 < picks.count(3) / 1000 < 0.6 and set(picks) == {3, 5}


def test_train_siit_strict_focus_and_the_new_weights_reach_the_card(tmp_path, restore_tasks, capsys):
    from harness.cli import main

    assert main(["train-siit", "--task", "suite:lib-count-3x4", "--max-steps", "2", "--strict-focus", "0.5",
                 "--average-weight", "0.25", "--centre-weight", "2", "--out", str(tmp_path), "--quiet"]) == 1  # rejected
    card = json.loads((tmp_path / "trained" / "rejected" / "trained-lib-count-3x4.json").read_text())
    assert (card["train"]["strict_focus"], card["train"]["average_weight"], card["train"]["centre_weight"]) == (0.5, 0.25, 2)
    assert card["command"].endswith("--max-steps 2 --average-weight 0.25 --centre-weight 2 --strict-focus 0.5")
    for bad, says in ((["--strict-focus", "1.5"], "from 0 to 1"), (["--strict-focus", "0.5", "--strict-nodes", "all"],
                                                                     "one strict node")):
        with pytest.raises(SystemExit) as e:
            main(["train-siit", "--task", "suite:lib-count-3x4", "--out", str(tmp_path), *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err
    task, pair = _pair("suite:lib-count-3x4")
    with pytest.raises(ValueError, match="strict_nodes 'one'"):
        siit.train(pair, tt.training_inputs(task)[:8], *(t[:4] for t in tt.validation_pairs(task, tt.training_inputs(task))),
                   siit.TrainConfig(max_steps=1, strict_focus=0.5, strict_nodes="subset"))


def test_an_averaged_compiled_output_trains_toward_that_average_only_with_average_weight():
    """Swapping IOI's S-inhibition head for a source whose subject is foreign to the base makes
    the name mover average the base's names (1/3 IO + 2/3 S): no label, not blank.
    `average_weight` adds KL(average || softmax) there, near zero when the LL's softmax is that
    average, and leaves labelled and blank positions' loss as it was."""
    task, pair = _pair("tracr-ioi")
    w = task.data("validation")
    sinh = next(i for i, n in enumerate(pair.corr.nodes) if n.startswith("blocks.1.attn"))
    clean = tt.training_inputs(task)[::2]  # the pool alternates clean and corrupted prompts
    out = pair.hl_out(clean[:60], clean[60:120], sinh)
    top = out.amax(-1)
    avg = out[(top >= siit.BLANK) & (top <= siit.DEFINED)][:, None]
    assert len(avg) >= 5 and torch.allclose(avg.sum(-1), torch.ones(())) 
    torch.testing.assert_close(avg.amax(-1), torch.full(avg.shape[:2], 2 / 3), atol=1e-4, rtol=0)
    assert not pair.labels(avg)[1].any()
    g = torch.Generator().manual_seed(0)
    ll = (3 * torch.randn(avg.shape, generator=g, dtype=avg.dtype)).requires_grad_(True)
    loss = pair.loss(ll, avg)
    loss.backward()
    assert loss.item() == 0 and not ll.grad.any()  # the default: nothing to learn there
    labelled, blank = pair.hl_out(w.clean[:4]), pair.hl_out(w.corrupted[:4])
    plain = [pair.loss(ll[:4].detach(), t).item() for t in (labelled, blank)]
    pair.average_weight = 2.0
    logp = torch.log_softmax(ll.detach(), -1)
    p = avg / avg.sum(-1, keepdim=True)
    kl = (p * (p.clamp(min=1e-30).log() - logp)).sum(-1).mean()
    torch.testing.assert_close(pair.loss(ll, avg), 2.0 * kl.float())
    assert kl > 0.5
    assert pair.loss(torch.log(avg + 1e-9), avg).item() == pytest.approx(0, abs=1e-6)
    assert [pair.loss(ll[:4].detach(), t).item() for t in (labelled, blank)] == plain


def test_centre_weight_charges_only_the_shift_every_class_shares():
    """Softmax ignores a shift of every logit; the L2 metric does not. `centre_weight` adds that
    weight times the squared mean over classes, averaged over positions, and nothing else."""
    task, pair = _pair("tracr-ioi")
    w = task.data("validation")
    target = pair.hl_out(w.clean[:4])
    g = torch.Generator().manual_seed(0)
    ll = 3 * torch.randn(target.shape, generator=g, dtype=target.dtype)
    ll = ll - ll.mean(-1, keepdim=True)  # centred: no shared shift
    plain = pair.loss(ll, target).item()
    assert pair.loss(ll + 5.0, target).item() == pytest.approx(plain, abs=1e-5)  # the default ignores a shift
    pair.centre_weight = 0.5
    assert pair.loss(ll, target).item() == pytest.approx(plain, abs=1e-5)
    shift = torch.arange(ll.shape[0], dtype=ll.dtype)[:, None, None]  # a different shift per row
    assert pair.loss(ll + shift, target).item() == pytest.approx(plain + 0.5 * float((shift ** 2).mean()), rel=1e-5)


def _parsed_config(command: str) -> siit.TrainConfig:
    import shlex

    from harness.cli import build_parser, train_config

    words = shlex.split(command)
    assert words[:2] == ["circuit-bench", "train-siit"]
    return train_config(build_parser().parse_args(words[1:]))


def test_each_shipped_cards_command_trains_with_its_cards_config():
    """The stored command, parsed by the CLI, gives the card's training config: a reader who runs
    it trains the shipped model's recipe (bit for bit where the CPU and threads match)."""
    for c in SHIPPED:
        assert _parsed_config(c["command"]) == siit.TrainConfig(**c["train"]), c["task"]


def test_the_command_names_every_training_option_the_cli_takes():
    """`trained_tasks.command` and the CLI's `train_config` round-trip every option, and every
    train-siit option that sets the recipe is in COMMAND_OPTIONS (so a new one reaches the card)."""
    from harness.cli import build_parser

    recipe = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train-siit"]._actions}
    recipe -= {"help", "task", "seed", "threads", "device", "out", "quiet"}
    assert recipe == {name for name, _ in tt.COMMAND_OPTIONS} and recipe <= set(siit.TrainConfig().to_dict())
    every = dict(max_steps=7, strict_weight=0.5, strict_logits=0.25, step_per_loss=True, strict_grad=True,
                 mixture_labels=True, blank_weight=1.5, average_weight=2.0, centre_weight=0.125, label_smoothing=0.05,
                 width_step=32, min_heads=8, paired_share=0.5, paired_strict=True, counterpart="swap", iit_weight=0.5, lr=1e-3,
                 seed=3)
    for tc in (siit.TrainConfig(**every, strict_nodes="subset"), siit.TrainConfig(**every, strict_focus=0.75)):
        cmd = tt.command("suite:lib-count-3x4", tc, 2)
        assert _parsed_config(cmd) == tc, cmd
    assert tt.command("tracr-reverse", siit.TrainConfig(), 1) == "circuit-bench train-siit --task tracr-reverse --seed 0 --threads 1"


def test_label_smoothing_makes_a_finite_margin_the_losss_optimum(capsys):
    """Plain cross-entropy keeps paying for a larger margin, so confidence keeps growing (and any
    node may be recruited to add it); with label smoothing e over K classes the loss is least at the
    margin log((1 - e + e/K) / (e/K)) and rises past it."""
    _, pair = _pair("suite:lib-count-3x4")
    k = pair.hl.cfg.vocab_out
    target = torch.zeros(1, 1, k)
    target[..., 1] = 1.0

    def loss(margin):
        out = torch.zeros(1, 1, k)
        out[..., 1] = margin
        return float(pair.loss(out, target))

    best = math.log((1 - 0.05 + 0.05 / k) / (0.05 / k))
    assert loss(2 * best) < loss(best) < loss(best / 2)  # no smoothing: more margin, less loss
    pair.label_smoothing = 0.05
    assert loss(best) < min(loss(0.8 * best), loss(1.25 * best)) and loss(2 * best) > loss(best) + 0.05
    from harness.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-siit", "--task", "suite:lib-count-3x4", "--label-smoothing", "1"])
    assert e.value.code == 2 and "leaves no label" in capsys.readouterr().err


def test_paired_share_trains_on_prompts_with_their_own_corruptions(capsys):
    """An analogue's pool holds each prompt beside its corruption (the minimal pairs methods are
    scored on); `paired_share` makes that share of the training pairs such pairs, drawn with a
    generator of its own, so the bases and every other draw stay what they were."""
    task = tt.base_task("tracr-greaterthan")
    pool, partner = tt.training_pool(task)
    assert torch.equal(pool, tt.training_inputs(task)) and (partner >= 0).all()
    assert torch.equal(partner[partner], torch.arange(len(pool))) and (partner != torch.arange(len(pool))).all()
    d = task.data("validation")
    varying = (d.clean != d.corrupted).any(0)  # the positions a corruption changes
    assert ((pool != pool[partner]) & ~varying).sum() == 0 and (pool != pool[partner]).any(1).all()
    # training: a pool whose rows are all distinct, so a row's index can be read back from its tokens
    task, pair = _pair("tracr-xproportion")
    pool = tt.training_inputs(task)
    rows = {tuple(r): i for i, r in enumerate(pool.tolist())}
    assert len(rows) == len(pool)
    partner = torch.arange(len(pool)) ^ 1
    partner[-100:] = -1  # rows without a counterpart keep their random source
    seen = []
    losses = pair.losses

    def record(b, s, *a, **k):
        if len(b) == siit.TrainConfig.batch:  # training batches, not validation's
            seen.append(([rows[tuple(r)] for r in b.tolist()], [rows[tuple(r)] for r in s.tolist()],
                         [rows[tuple(r)] for r in (s if k.get("strict_source") is None else k["strict_source"]).tolist()]))
        return losses(b, s, *a, **k)

    pair.losses = record
    runs = {}
    for share, strict_only in ((0.0, False), (0.5, False), (1.0, False), (1.0, True)):
        seen.clear()
        siit.train(pair, pool, pool[:8], pool[8:16], siit.TrainConfig(max_steps=4, eval_every=1000, paired_share=share,
                                                                      paired_strict=strict_only), partner=partner)
        bi, si, strict_si = (torch.tensor(sum(x, [])) for x in zip(*seen))
        has = partner[bi] >= 0
        runs[share, strict_only] = (bi, float((si[has] == partner[bi][has]).double().mean()), si[~has], si,
                                    float((strict_si[has] == partner[bi][has]).double().mean()))
    assert runs[0.0, False][1] < 0.05 and 0.4 < runs[0.5, False][1] < 0.6 and runs[1.0, False][1] == 1.0
    assert all(torch.equal(runs[0.0, False][0], r[0]) for r in runs.values())  # the same bases
    assert all(torch.equal(runs[0.0, False][2], r[2]) for r in runs.values())  # and the same sources where no partner
    # paired_strict: the strict loss's sources are the partners, IIT's and behaviour's the random ones
    assert runs[1.0, True][4] == 1.0 and torch.equal(runs[1.0, True][3], runs[0.0, False][3])
    with pytest.raises(ValueError, match="set paired_share"):
        siit.train(pair, pool, pool[:8], pool[8:16], siit.TrainConfig(max_steps=1, paired_strict=True), partner=partner)
    _, vocabulary = tt.training_pool(tt.base_task("suite:lib-count-3x4"))
    assert (vocabulary == -1).all()
    with pytest.raises(ValueError, match="no such pairs"):
        siit.train(pair, pool, pool[:8], pool[8:16], siit.TrainConfig(max_steps=1, paired_share=0.5))
    from harness.cli import main

    for bad, says in ((["--paired-share", "1.5"], "from 0 to 1"), (["--paired-share", "0.5"], "no (prompt, corruption)"),
                      (["--paired-strict"], "add --paired-share")):
        with pytest.raises(SystemExit) as e:
            main(["train-siit", "--task", "suite:lib-count-3x4", *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_validation_says_how_many_cases_each_figure_counts():
    """Accuracy counts the scored positions where the compiled output on the base is a label; each
    IIA, those where the compiled output under that node's intervention is one. Greater-Than's
    program answers everywhere; IOI's has no answer under any intervention from its own corrupted
    prompts (no name repeats there), so its IIA rests on the random pairs alone."""
    task, pair = _pair("tracr-greaterthan")
    b, s = tt.validation_pairs(task, tt.training_inputs(task))
    figs = pair.validate(b, s)
    n = len(b) * len(pair.positions)
    assert figs["cases"] == n and set(figs["iia_cases_per_node"].values()) == {n}
    task, pair = _pair("tracr-ioi")
    d = task.data("validation")
    figs = pair.validate(d.clean, d.corrupted)
    assert figs["cases"] == len(d.clean) and set(figs["iia_cases_per_node"]) == set(pair.corr.nodes)
    assert set(figs["iia_cases_per_node"].values()) == {0}
    assert math.isnan(figs["iia"]) and any(m.startswith("iia nan") for m in tt.passes(figs))  # no case: no IIA, no ship


def test_a_role_swap_gives_every_interchange_of_a_minimal_ioi_pair_an_answer(capsys, monkeypatch):
    """IOI's corruption leaves the program no answer under any interchange (test above); its role
    swap (the names exchanged, every position kept) is a minimal pair under which every circuit
    node's interchange has one, and the S-inhibition head's and the name mover's change it.
    `counterpart="swap"` appends each clean prompt's swap to the pool as its partner and leaves
    the rows before it, which validation draws from, as they were."""
    task, pair = _pair("tracr-ioi")
    clean, corrupted, *_ = task.examples(random.Random(3))
    swap = task.role_swap(clean)
    moved = [i for i, (a, b) in enumerate(zip(clean, swap)) if a != b]
    assert len(swap) == len(clean) and len(moved) == 3 and sorted(set(swap)) == sorted(set(clean))
    assert task.role_swap(swap) == clean and Counter(clean)[swap[moved[0]]] != Counter(swap)[swap[moved[0]]]
    with pytest.raises(ValueError, match="two names"):
        task.role_swap(corrupted)
    pool, partner = tt.training_pool(task)
    grown, grown_partner = tt.with_role_swaps(task, pool, partner)
    n, k = len(pool), len(grown) - len(pool)
    assert torch.equal(grown[:n], pool) and k == int((partner >= 0).sum()) // 2
    rows = torch.arange(n, n + k)
    cleans = grown_partner[rows]
    assert torch.equal(cleans, torch.arange(0, n, 2)) and torch.equal(grown_partner[cleans], rows)
    assert torch.equal(grown_partner[1:n:2], torch.arange(0, n, 2))  # a corruption keeps its clean prompt
    token = {i: t for t, i in task.tracr().input_encoding.items()}
    assert [token[int(i)] for i in grown[n + 5, 1:]] == task.role_swap([token[int(i)] for i in grown[10, 1:]])
    figs = pair.validate(grown[cleans[:64]], grown[rows[:64]])
    assert set(figs["iia_cases_per_node"].values()) == {64}
    base = pair.hl_out(grown[cleans[:64]]).argmax(-1)
    src = pair.hl_engine.cache(grown[rows[:64]]).senders
    changed = [bool((pair.hl_out(grown[cleans[:64]], grown[rows[:64]], i, src).argmax(-1) != base).all())
               for i in range(len(pair.corr.nodes))]
    assert changed == [False, False, True, True]  # duplicate head, counting MLP: the same counts; the rest: the other name
    with pytest.raises(ValueError, match="defines no role swap"):
        tt.with_role_swaps(tt.base_task("tracr-greaterthan"), *tt.training_pool(tt.base_task("tracr-greaterthan")))
    monkeypatch.setattr(tt.siit, "train", lambda *a, **k: pytest.fail("trained despite a bad counterpart"))
    for bad in (siit.TrainConfig(counterpart="swap"), siit.TrainConfig(counterpart="swapped", paired_share=1.0)):
        with pytest.raises(ValueError, match="counterpart"):
            tt.train("tracr-ioi", bad)
    from harness.cli import main

    for task_name, bad, says in (("tracr-ioi", ["--counterpart", "swap"], "add --paired-share"),
                                 ("tracr-greaterthan", ["--counterpart", "swap", "--paired-share", "1"], "defines no role swap")):
        with pytest.raises(SystemExit) as e:
            main(["train-siit", "--task", task_name, *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("options", [{}, {"strict_grad": True}, {"strict_logits": True}])
def test_a_strict_source_of_its_own_reaches_the_strict_loss_alone(options):
    """`losses(..., strict_source=o)`: the strict loss is the one `o` as the source gives, the IIT
    and behaviour losses the ones `source` gives."""
    task, pair = _pair()
    pool = tt.training_inputs(task)
    b, s, o = pool[:32], pool[32:64], pool[64:96]
    j = pair.corr.non_circuit[0]
    got = pair.losses(b, s, 1, [j], strict_source=o, **options)
    with_s, with_o = pair.losses(b, s, 1, [j], **options), pair.losses(b, o, 1, [j], **options)
    for k in ("iit", "behaviour"):
        torch.testing.assert_close(got[k], with_s[k])
    torch.testing.assert_close(got["strict"], with_o["strict"])
    assert not torch.allclose(with_s["strict"], with_o["strict"])
    torch.testing.assert_close(pair.losses(b, s, 1, [j], strict_source=s, **options)["strict"], with_s["strict"])
