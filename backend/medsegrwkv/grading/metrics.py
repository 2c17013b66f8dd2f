"""Grading metrics: accuracy, Cohen's kappa (unweighted as CMRxMotion, linear-weighted), per-class
recall, expected calibration error, and temperature scaling (Guo et al., ICML 2017)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

SCORES = (1, 2, 3, 4, 5)
LEVELS = ("severe", "moderate", "mild")  # CMRxMotion levels: 1-2 severe, 3 moderate, 4-5 mild


def level_of_score(scores: np.ndarray | Sequence[int]) -> np.ndarray:
    """0 severe (1-2), 1 moderate (3), 2 mild (4-5)."""
    s = np.asarray(scores)
    return np.where(s <= 2, 0, np.where(s == 3, 1, 2))


def confusion(truth: Sequence[int], pred: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    index = {l: i for i, l in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, pred):
        m[index[int(t)], index[int(p)]] += 1
    return m


def cohen_kappa(truth: Sequence[int], pred: Sequence[int], labels: Sequence[int],
                weights: str | None = None) -> float:
    """Cohen's kappa; weights None (unweighted) or "linear" (|i - j| / (k - 1))."""
    m = confusion(truth, pred, labels).astype(float)
    n = m.sum()
    if n == 0:
        return float("nan")
    k = len(labels)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    w = (i != j).astype(float) if weights is None else np.abs(i - j) / (k - 1)
    expected = np.outer(m.sum(1), m.sum(0)) / n
    denominator = (w * expected).sum()
    return float(1.0 - (w * m).sum() / denominator) if denominator > 0 else 1.0


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == truth).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (confidence > lo) & (confidence <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, truth: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(truth)), truth], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    result = minimize_scalar(lambda log_t: nll(logits, truth, float(np.exp(log_t))), bounds=(-3.0, 3.0),
                             method="bounded")
    return float(np.exp(result.x))


def grading_metrics(logits: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Everything the validation table reports, for logits (N, 5) and true scores 1..5.

    Calibration: ECE before temperature scaling; after it with the temperature fitted on one half
    of the patients and applied to the other (2-fold by `groups`, so the number is not fitted on
    itself); `temperature` is the one fitted on all samples, the one to deploy.
    """
    truth = np.asarray(scores) - 1
    probs = softmax(logits)
    pred = probs.argmax(1) + 1
    out: dict[str, Any] = {
        "samples": int(len(truth)),
        "accuracy": float((pred == truth + 1).mean()),
        "kappa": cohen_kappa(truth + 1, pred, SCORES),
        "kappa_linear": cohen_kappa(truth + 1, pred, SCORES, "linear"),
        "recall": {str(s): float((pred[truth + 1 == s] == s).mean()) if (truth + 1 == s).any() else None
                   for s in SCORES},
        "confusion": confusion(truth + 1, pred, SCORES).tolist(),
        "mean_abs_error_expected_score": float(np.abs(probs @ np.arange(1, 6) - (truth + 1)).mean()),
    }
    lt, lp = level_of_score(truth + 1), level_of_score(pred)
    out["accuracy_3level"] = float((lt == lp).mean())
    out["kappa_3level"] = cohen_kappa(lt, lp, (0, 1, 2))
    out["ece"] = expected_calibration_error(probs, truth)
    out["nll"] = nll(logits, truth)
    temperature = fit_temperature(logits, truth)
    out["temperature"] = temperature
    if groups is not None and len(np.unique(groups)) >= 2:
        names = np.unique(groups)
        fold = np.isin(groups, names[::2])
        calibrated = np.zeros_like(probs)
        for a in (fold, ~fold):
            t = fit_temperature(logits[~a], truth[~a])
            calibrated[a] = softmax(logits[a], t)
        out["ece_temperature_scaled"] = expected_calibration_error(calibrated, truth)
        out["ece_temperature_scaled_protocol"] = "temperature fitted on half of the patients, applied to the other half"
    else:
        out["ece_temperature_scaled"] = expected_calibration_error(softmax(logits, temperature), truth)
        out["ece_temperature_scaled_protocol"] = "temperature fitted and evaluated on the same samples"
    return out
