"""Tasks on another causal LM (`run --model M`, harness/tasks/on_model.py): the model's own weights
and tokenizer from --weights-dir (a random-init model saved as a user's download would be),
its BOS, single-token answers, no ground truth (scores and faithfulness), and one-line errors."""
import json

import pytest
import torch

from harness.cli import main
from harness.core.loading import MissingWeightsError, load_weights, packaged_gpt2_files, packaged_gpt2_tokenizer
from harness.core.loading_hf import random_hf_model

pytestmark = pytest.mark.skipif(packaged_gpt2_files() is None, reason="needs the packaged GPT-2 tokenizer files")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """DIR/llama-3.2-1b and DIR/gemma-2-2b: reduced random-init models of those families with
    GPT-2's tokenizer (so IOI's names are single tokens), saved with save_pretrained."""
    d = tmp_path_factory.mktemp("weights")
    for name, t in (("llama-3.2-1b", "llama"), ("gemma-2-2b", "gemma2")):
        random_hf_model(t, seed=0, vocab_size=50257).save_pretrained(d / name)
        packaged_gpt2_tokenizer().save_pretrained(d / name)
    return d


def test_a_saved_model_loads_as_transformers_runs_it(weights_dir, offline_hub):
    from transformers import AutoModelForCausalLM

    from harness.core.engine import Engine

    for name in ("llama-3.2-1b", "gemma-2-2b"):
        w = load_weights(name, weights_dir=weights_dir)
        hf = AutoModelForCausalLM.from_pretrained(str(weights_dir / name), attn_implementation="eager").eval()
        x = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert float((Engine(w).run(x).logits - hf(x).logits).abs().max()) < 1e-4
        assert w.provenance["files"] == str(weights_dir / name)


def test_missing_weights_name_the_fix(offline_hub, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"'qwen2.5-0.5b'.*Qwen/Qwen2.5-0.5B.*Fix: .*hf download Qwen/Qwen2.5-0.5B"):
        load_weights("qwen2.5-0.5b", weights_dir=tmp_path)


def test_run_with_model_scores_every_edge_without_ground_truth(weights_dir, offline_hub, tmp_path, restore_tasks):
    out = tmp_path / "out"
    rc = main(["-q", "run", "--model", "llama-3.2-1b", "--tasks", "ioi", "seed-pair", "repeated-tokens", "--methods", "eap", "random",
               "--ablation", "resample", "--bootstrap", "0", "--weights-dir", str(weights_dir), "--out", str(out)])
    assert rc == 0
    from harness.core.graph import Graph

    n_edges = Graph(load_weights("llama-3.2-1b", weights_dir=weights_dir).cfg).n_edges
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert {r["task"] for r in records} == {"ioi@llama-3.2-1b", "seed-pair@llama-3.2-1b", "repeated-tokens@llama-3.2-1b"}
    for r in records:
        assert r["status"] == "ok", r.get("error")
        assert len(r["scores"]) == n_edges and r["rows"] == []  # every edge scored; no ground truth, no AUC
        assert r["faithfulness"]  # what a run without ground truth measures
    report = (out / "report.md").read_text()
    assert "ioi@llama-3.2-1b" in report and "faithfulness_ioi@llama-3.2-1b.png" in report


def test_prompts_get_the_bos_the_models_tokenizer_adds(restore_tasks):
    from harness.tasks.on_model import register_on_model
    from harness.tasks import TASKS

    with_bos = packaged_gpt2_tokenizer(for_bridge=True)  # adds <|endoftext|> as BOS
    plain = TASKS[register_on_model("seed-pair", "llama-3.2-1b")](tokenizer=packaged_gpt2_tokenizer()).data()
    bos = TASKS[register_on_model("seed-pair", "llama-3.2-1b")](tokenizer=with_bos).data()
    assert bool((bos.clean[:, 0] == with_bos.bos_token_id).all())
    assert torch.equal(bos.clean[:, 1:], plain.clean)
    # ACDC's GPT-2 data keeps no BOS
    from harness.tasks import get_task

    acdc = type(get_task("seed-pair"))(tokenizer=with_bos).data()
    assert torch.equal(acdc.clean, plain.clean)


class _SplitsMary:
    """GPT-2's tokenizer, except that " Mary" is two tokens."""

    def __init__(self):
        self.tok = packaged_gpt2_tokenizer()
        self.bos_token_id = None

    def encode(self, text, add_special_tokens=False):
        ids = self.tok.encode(text, add_special_tokens=False)
        return ids * 2 if text == " Mary" else ids


def test_multi_token_answers_are_a_clear_error(restore_tasks):
    from harness.tasks import TASKS
    from harness.tasks.on_model import register_on_model

    for task in ("ioi", "seed-pair"):
        t = TASKS[register_on_model(task, "llama-3.2-1b")](tokenizer=_SplitsMary())
        with pytest.raises(ValueError, match=r"Mary.* 2 tokens in llama-3.2-1b's tokenizer.*single tokens|one token"):
            t.data()


@pytest.mark.parametrize("argv,message", [
    (["--model", "gpt-5"], "unknown model 'gpt-5' for --model; models: llama-3.2-1b"),
    (["--model", "llama-3.2-1b", "--tasks", "tracr-reverse"], "task 'tracr-reverse' cannot run on another model; tasks that can: ioi"),
    (["--tasks", "docstring@pythia-70m"], "task 'docstring' cannot run on another model"),
])
def test_bad_model_options_are_one_line_errors(argv, message, capsys, tmp_path, restore_tasks):
    with pytest.raises(SystemExit) as e:
        main(["run", *argv, "--out", str(tmp_path / "o")])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_absent_weights_skip_the_task_saying_why(offline_hub, tmp_path, restore_tasks):
    out = tmp_path / "out"
    assert main(["-q", "run", "--model", "pythia-70m", "--tasks", "ioi", "--methods", "eap", "--ablation", "resample",
                 "--bootstrap", "0", "--out", str(out)]) == 2  # nothing ran
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert records and all(r["task"] == "ioi@pythia-70m" for r in records)
    for rec in records:
        assert rec["status"] == "skipped" and "EleutherAI/pythia-70m" in rec["error"] and "Fix:" in rec["error"]


def test_repeated_tokens_are_a_repeat_scored_on_the_second_copy(restore_tasks):
    from harness.tasks import TASKS
    from harness.tasks.on_model import register_on_model
    from harness.tasks.repeated_tokens import HALF

    tok = packaged_gpt2_tokenizer()
    d = TASKS["repeated-tokens"](tokenizer=tok).data()
    T = HALF
    assert d.clean.shape == (100, 2 * T - 1) and int(d.pos_mask.sum(1).unique()) == T - 1
    full = torch.cat([d.clean, d.correct[:, -1:]], 1)  # the prompt and its last label: the whole sequence
    assert torch.equal(full[:, :T], full[:, T:])  # a repeat
    assert torch.equal(d.corrupted[:, T:], d.clean[:, T:]) and not torch.equal(d.corrupted[:, :T], d.clean[:, :T])
    assert torch.equal(d.correct[:, :-1], d.clean[:, 1:])  # labels: the next token
    assert bool(d.pos_mask[:, T:].all()) and not bool(d.pos_mask[:, :T].any())
    assert tok.eos_token_id not in full.unique().tolist()  # no special tokens
    # the two splits differ; a model whose tokenizer adds a BOS gets it first, the same tokens after
    test = TASKS["repeated-tokens"](tokenizer=tok).data(split="test")
    assert not torch.equal(test.clean, d.clean)
    with_bos = packaged_gpt2_tokenizer(for_bridge=True)
    b = TASKS[register_on_model("repeated-tokens", "llama-3.2-1b")](tokenizer=with_bos).data()
    assert bool((b.clean[:, 0] == with_bos.bos_token_id).all()) and b.clean.shape[1] == 2 * T
    assert int(b.pos_mask.sum(1).unique()) == T - 1 and bool(b.pos_mask[:, T + 1:].all())
