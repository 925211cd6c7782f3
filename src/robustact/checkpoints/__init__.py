"""Checkpoints and runs on disk: weights (`weights.py`), the training state for exact resume (`state.py`), and
opening a run directory or checkpoint file as a model plus its config (`runs.py`). Training writes them,
evaluation and analysis read them; neither owns them."""

from robustact.checkpoints.runs import (
    checkpoint_label,
    load_model,
    load_source_model,
    resolve_checkpoint,
    run_config,
    run_of,
)
from robustact.checkpoints.weights import init_weights_from, load_weights_into, read_weights, save_weights

__all__ = ["checkpoint_label", "init_weights_from", "load_model", "load_source_model", "load_weights_into",
           "read_weights", "resolve_checkpoint", "run_config", "run_of", "save_weights"]
