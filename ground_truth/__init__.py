"""The stored ground-truth circuits, shipped as package data `harness.ground_truth`.

Each `<task>.<variant>.json` names its provenance; `harness.core.ground_truth` reads them.
"""
