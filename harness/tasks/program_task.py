"""Tasks built from programs users bring (`circuit-bench run --program FILE`, the file's contract in
`harness.programs.user_program`).

`register_program(path)` compiles the program, derives its structural ground truth into a folder
under the tracr cache (`cache_dir()/programs/<NAME>-<key>/`, the task's `ground_truth_dir`, so
fingerprints, validation and scoring work as for any task) and registers the task
`program:<NAME>`; `register_spec(spec, ...)` does the same for a `ProgramSpec` (tracr's library
programs, `suite:<name>`: harness.programs.library). Each is a `TracrTask`: float64, random reset
control, the L2 metric, ACDC's position scramble under resample ablation, positions 1.. scored
(0 is BOS).

Data (`ProgramTask.data`): distinct inputs of MAX_SEQ_LEN tokens over VOCAB, drawn with the seed
(all of them, shuffled, when few exist): up to 50 per split, the validation and test rows
disjoint when at least 20 inputs exist (else both splits use the same rows). The corrupted rows
are a seeded derangement of the clean rows that pairs rows whose compiled outputs differ
wherever possible (rows sorted by output, shifted by the size of the largest group of equal
outputs); rows whose output the corruption leaves unchanged are dropped, since no edge can matter
for them under resample ablation. Answers (categorical outputs): `correct` is the clean output's
class, `counterfactual` the corrupted input's, `wrong` the counterfactual where it differs, else
the next class.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import replace

import torch

from harness.core.data import check_split
from harness.programs.rasp_programs import ProgramSpec
from harness.programs.tracr_models import load_tracr
from harness.programs.user_program import (ProgramError, UserProgram, ground_truths, load, prepare,
                                           spec_ground_truth_folder, spec_ground_truths, write_ground_truths)
from harness.tasks import register_task
from harness.tasks.tracr_tasks import TracrTask

ENUMERATE_UP_TO = 100_000  # inputs: all of them, shuffled, up to this many; drawn one by one above it
MIN_SPLIT = 10  # fewer inputs than this per split: both splits use the same rows


class ProgramTask(TracrTask):
    """A compiled RASP program as a task; `register_program` (a user's file) and `register_spec`
    (a ProgramSpec, e.g. tracr's library programs: harness.programs.library) make one subclass per
    program."""

    user: UserProgram | None = None  # set for a user's program file
    spec: ProgramSpec | None = None  # the program and its compiler settings
    where: str = ""  # names the program in refusals (a user's file path)
    distinct_tokens = False  # inputs only with pairwise distinct tokens (e.g. make_sort_unique's unique keys)
    n_per_split = 50

    def tracr(self):
        if self._model is None:
            self._model = load_tracr(self.spec)
        return self._model

    def loading_line(self) -> str:
        if self.user is None:
            return f"compiling {self.where} with tracr (read from the cache after the first run)"
        return f"compiling your RASP program {self.user.path} with tracr (read from the cache after the first run)"

    def inputs(self, split: str, seed: int) -> tuple:
        """(the split's distinct input sequences, whether the two splits share them)."""
        spec = self.spec
        vocab, n_len, n = list(spec.vocab), spec.max_seq_len, self.n_per_split
        total = len(vocab) ** n_len
        rng = random.Random(seed)
        if total <= ENUMERATE_UP_TO:
            every = [list(s) for s in itertools.product(vocab, repeat=n_len)
                     if not self.distinct_tokens or len(set(s)) == n_len]
            rng.shuffle(every)
            seqs = every[: 2 * n]
        else:
            seen, seqs = set(), []
            while len(seqs) < 2 * n:
                s = tuple(rng.choice(vocab) for _ in range(n_len))
                if s not in seen and (not self.distinct_tokens or len(set(s)) == n_len):
                    seen.add(s)
                    seqs.append(list(s))
        per = min(n, len(seqs) // 2)
        if per < MIN_SPLIT:
            return seqs[:n], True
        return (seqs[:per] if split == "validation" else seqs[per : 2 * per]), False

    def data(self, split="validation", seed=0, ablation="resample"):
        check_split(split)
        from harness.core.engine import Engine

        m = self.tracr()
        seqs, shared = self.inputs(split, seed)
        if len(seqs) < 2:
            raise ProgramError(f"{self.where}: only {len(seqs)} input exists (VOCAB^MAX_SEQ_LEN); a corrupted "
                               "input needs another one: enlarge VOCAB or MAX_SEQ_LEN")
        engine = Engine(m.weights.to(dtype=torch.float64))
        clean = m.encode(seqs)
        out = engine.logits(clean)[:, 1:]  # position 0 is BOS
        if m.categorical_output:  # the class at each position; -1 where the output is None (no one-hot)
            keys = torch.where(out.amax(-1) > 0.5, out.argmax(-1), -1)
        else:
            keys = out[..., 0].round(decimals=6)
        groups: dict = {}
        for i, k in enumerate(map(tuple, keys.tolist())):
            groups.setdefault(k, []).append(i)
        rng = random.Random(1000003 * seed + (split == "test"))
        ordered = list(groups.values())
        rng.shuffle(ordered)
        for g in ordered:
            rng.shuffle(g)
        ordered.sort(key=len, reverse=True)  # stable: equal sizes keep their shuffled order
        order = [i for g in ordered for i in g]
        B, shift = len(order), len(ordered[0])
        if shift == B:
            raise ProgramError(f"{self.where}: the program gives the same output on every input of the {split} "
                               "split, so no corrupted input changes it; use a program whose output depends on it")
        perm = torch.empty(B, dtype=torch.long)
        perm[torch.tensor(order)] = torch.tensor([order[(k + shift) % B] for k in range(B)])
        keep = torch.tensor([keys[i].tolist() != keys[int(perm[i])].tolist() for i in range(B)])
        corr = clean[perm][keep]
        clean, out, corr_out = clean[keep], out[keep], out[perm][keep]
        info = {"split": split, "n": int(keep.sum()),
                "dropped_unchanged": int((~keep).sum()), **({"splits_share_rows": True} if shared else {})}
        if not m.categorical_output:
            values = torch.cat([out[..., 0], corr_out[..., 0]])
            lo, hi = float(values.min()), float(values.max())
            d = self._pack(None, None, categorical=False, ablation=ablation, info=info, ids=(clean, corr))
            return replace(d, output_range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
        P = clean.shape[1]
        correct = torch.zeros(clean.shape[0], P, dtype=torch.long)
        cf = torch.zeros_like(correct)
        correct[:, 1:] = out.argmax(-1)
        cf[:, 1:] = corr_out.argmax(-1)
        n_out = out.shape[-1]
        wrong = torch.where(cf != correct, cf, (correct + 1) % n_out).unsqueeze(-1)
        return self._pack(None, None, correct, wrong, cf, True, ablation, info, ids=(clean, corr))


def register_program(path) -> str:
    """Compile, check and register the program in `path` (a ProgramError says why it cannot be);
    returns its task name, `program:<NAME>`."""
    up, model, folder = prepare(path)
    spec = up.spec
    ground_truths(up, model)  # check_circuit's refusals first: they need no data
    cls = type(f"ProgramTask_{up.name}", (ProgramTask,), {
        "__doc__": f"The RASP program of {up.path} (circuit-bench run --program).",
        "name": up.task_name, "model": spec.name, "program": spec.name, "user": up, "spec": spec, "where": str(up.path),
        "ground_truth_task": spec.name, "ground_truth_dir": folder,
        "description": f"your RASP program {up.path.name}: {len(spec.vocab)} tokens, max_seq_len {spec.max_seq_len}"
                       + (", causal" if spec.causal else ""),
    })
    _write_on_inputs(cls, lambda tokens: ground_truths(up, model, tokens), folder)
    register_task(cls)
    return up.task_name


def _write_on_inputs(cls, derive, folder) -> None:
    """Write the task's ground truths `derive(tokens)`, derived on its inputs (structural-zero
    reads them). A program whose output no corruption changes is refused here, building its
    data, in one line."""
    write_ground_truths(derive(cls().ground_truth_inputs()), folder)


def register_spec(spec: ProgramSpec, task_name: str, *, where: str, description: str, source: str,
                  distinct_tokens: bool = False, doc: str = "") -> str:
    """Compile `spec` (cached), derive and check its structural ground truth (`check_circuit`),
    write it to `cache_dir()/programs/<spec.name>-<key>/`, check that some corruption changes its
    output, and register `task_name` as a ProgramTask; a ProgramError says why it cannot be.
    `where` names the program in refusals; `source` is the ground truths' provenance."""
    try:
        model = load_tracr(spec)
    except OSError:
        raise
    except Exception as e:
        raise ProgramError(f"tracr cannot compile {where}: {' '.join(str(e).split())[:300]}") from None
    spec_ground_truths(spec, model, where, source)  # check_circuit's refusals first: they need no data
    folder = spec_ground_truth_folder(spec, spec.name)
    cls = type(f"ProgramTask_{spec.name}".replace("-", "_").replace(".", "_"), (ProgramTask,), {
        "__doc__": doc or f"The RASP program {where}.",
        "name": task_name, "model": spec.name, "program": spec.name, "spec": spec, "where": where,
        "distinct_tokens": distinct_tokens, "ground_truth_task": spec.name, "ground_truth_dir": folder,
        "description": description,
    })
    _write_on_inputs(cls, lambda tokens: spec_ground_truths(spec, model, where, source, tokens), folder)
    register_task(cls)
    return task_name


def register_programs(paths) -> list:
    """`register_program` for each path, refusing two different programs with one NAME."""
    seen = {}
    for p in paths:  # the files are read and checked first: compiling is the slow part
        user = load(p)
        if user.task_name in seen and seen[user.task_name].text != user.text:
            raise ProgramError(f"{seen[user.task_name].path} and {user.path} are both named {user.task_name}: "
                               "set NAME in one of them")
        seen[user.task_name] = user
    return list(dict.fromkeys(register_program(p) for p in paths))
