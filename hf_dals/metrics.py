"""Metrics computed locally, so evaluation works offline.

``evaluate.load("accuracy")`` downloads the metric's code from the Hugging Face Hub, which fails
without network access; accuracy is a one-line NumPy computation, so hf-dals computes it here.
"""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction

__all__ = ["compute_accuracy"]


def compute_accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Return ``{"accuracy": fraction of argmax predictions equal to the labels}``.

    Accepts Trainer's ``EvalPrediction`` (logits of shape (n, num_labels), or a tuple whose first
    element holds them) and integer labels of shape (n,).
    """
    predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(axis=-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions of shape {predictions.shape} do not match labels of shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("cannot compute accuracy on an empty evaluation set")
    return {"accuracy": float((predictions == labels).mean())}
