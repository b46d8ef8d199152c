"""Tasks that run on any causal LM, on a model the user studies: `<task>@<model>` (`run --model M`).

IOI, Greater-Than, the seed's prompt pair and repeated random tokens need only a tokenizer and
a causal LM. On another model (a family of `harness.core.loading_hf.MODELS`, found as
`harness.core.loading` finds weights) the task is the same data tokenised with that model's own
tokenizer, with the BOS its tokenizer adds by default; every answer must be one token there (a
clear error otherwise), and prompts must tokenise to one length. ACDC's circuits are circuits of
GPT-2, so these tasks have no stored ground truth: a run gives every method's edge scores and
faithfulness curves, no AUC (docs/tasks.md#tasks-on-other-models).
"""
from __future__ import annotations

from harness.tasks import TASKS, register_task

ANY_LM_TASKS = ("ioi", "greaterthan", "seed-pair", "repeated-tokens")
SEPARATOR = "@"


def on_model_name(task: str, model: str) -> str:
    return f"{task}{SEPARATOR}{model}"


def family_models() -> tuple:
    from harness.core.loading import FAMILY_REPOS

    return tuple(FAMILY_REPOS)


def register_on_model(task: str, model: str) -> str:
    """Register `<task>@<model>` (idempotent) and return its name; a task that cannot run on
    another model, or a model that is not known, is a ValueError naming the valid ones."""
    if task not in ANY_LM_TASKS:
        raise ValueError(f"task {task!r} cannot run on another model; tasks that can: {', '.join(ANY_LM_TASKS)}")
    if model not in family_models():
        raise ValueError(f"unknown model {model!r} for --model; models: {', '.join(family_models())}")
    name = on_model_name(task, model)
    if name in TASKS:
        return name
    base = TASKS[task]
    attrs = {
        "name": name, "model": model, "requires": (model,), "tokenizer_key": model, "prompt_tokens": None,
        "on_model": True, "in_default_run": False, "has_ground_truth": False, "ground_truth_task": name,
        "mirrors": None, "reset_by_default": False,
        "description": f"{task} on {model} (its own tokenizer; no stored ground truth: scores and faithfulness only)",
    }
    register_task(type(base.__name__ + "OnModel", (base,), attrs))
    return name


def resolve(name: str) -> bool:
    """Register `name` if it is a `<task>@<model>` name; True when it is one."""
    if SEPARATOR not in name or name in TASKS:
        return SEPARATOR in name
    task, _, model = name.partition(SEPARATOR)
    register_on_model(task, model)
    return True
