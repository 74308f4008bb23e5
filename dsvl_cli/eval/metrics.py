"""The numbers `dsvl eval` reports, from its item records (one per question asked).

- `n`: rows scored (an error row is in `errors`, not in `n`; with --circular a row is right only
  when every rotation is right, and `n` still counts rows).
- `accuracy` with a 95% Wilson score interval (`ci95`): unlike the normal approximation it stays
  inside [0, 1] and is honest for small n and for accuracies near 0 or 1.
- `ece`: expected calibration error over every question asked (each rotation one), the confidence
  being the predicted label's probability, in 10 equal-width bins: sum over bins of
  |accuracy - mean confidence| x (questions in the bin / questions).
- `brier`: the mean over questions of sum over labels of (probability - [label is right])^2
  (0 is perfect; 2 the worst).
  Both need probabilities: None with --method generate.
- `categories` and (when the file has them) `l2_categories`: n, correct, accuracy, ci95 of each.
- Yes/no sets: `precision`, `recall`, `f1` with Yes as the positive class, and `yes_ratio` (the
  share of predictions that are Yes), over rows.
- `unparsed` (--method generate): answers no rule could read; they count as wrong.
No torch here.
"""

from __future__ import annotations

import math
from collections import defaultdict

Z95 = 1.959963984540054
BINS = 10


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for correct/n ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exactly, not 1e-17 from rounding
    return low, 1.0 if correct == n else min(1.0, centre + half)


def calibration_bins(items: list[dict], bins: int = BINS) -> list[dict]:
    """[{lo, hi, n, accuracy, confidence}] of the scored items (those with probabilities)."""
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for item in items:
        confidence = item["probabilities"][item["prediction"]]
        groups[min(bins - 1, int(confidence * bins))].append((confidence, item["correct"]))
    out = []
    for k, group in enumerate(groups):
        n = len(group)
        out.append({"lo": k / bins, "hi": (k + 1) / bins, "n": n,
                    "accuracy": sum(c for _, c in group) / n if n else None,
                    "confidence": sum(p for p, _ in group) / n if n else None})
    return out


def ece(items: list[dict]) -> float | None:
    total = len(items)
    if not total:
        return None
    return sum(b["n"] / total * abs(b["accuracy"] - b["confidence"]) for b in calibration_bins(items) if b["n"])


def brier(items: list[dict]) -> float | None:
    if not items:
        return None
    return sum(sum((p - (label == item["answer"])) ** 2 for label, p in item["probabilities"].items())
               for item in items) / len(items)


def yes_no(pairs: list[tuple[str | None, str]]) -> dict:
    """precision, recall, f1 (Yes positive) and yes_ratio from (prediction, answer) pairs."""
    tp = sum(p == "Yes" and a == "Yes" for p, a in pairs)
    fp = sum(p == "Yes" and a == "No" for p, a in pairs)
    fn = sum(p != "Yes" and a == "Yes" for p, a in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    yes_ratio = sum(p == "Yes" for p, _ in pairs) / len(pairs) if pairs else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "yes_ratio": yes_ratio}


def summarise(rows: list, questions: list, items: dict[int, dict]) -> dict:
    """The summary object: rows in order, their questions, and the item records by question key
    (a question with no record was not answered: the run was cut short)."""
    per_row: dict[int, list] = defaultdict(list)
    for question in questions:
        per_row[id(question.row)].append(items.get(question.key))
    scored, errors, left = [], 0, 0
    for row in rows:
        records = per_row[id(row)]
        if any(r is not None and "error" in r for r in records):
            errors += 1
        elif any(r is None for r in records):
            left += 1
        else:
            scored.append((row, all(r["correct"] for r in records), records))
    answered = [r for _, _, records in scored for r in records]
    with_p = [r for r in answered if r.get("probabilities")]
    correct = sum(ok for _, ok, _ in scored)
    out = {"n": len(scored), "correct": correct, "accuracy": correct / len(scored) if scored else None,
           "ci95": list(wilson(correct, len(scored))), "errors": errors, "questions": len(answered),
           "ece": ece(with_p), "brier": brier(with_p), "categories": _categories(scored, "category")}
    if any(row.l2_category is not None for row, _, _ in scored):
        out["l2_categories"] = _categories(scored, "l2_category")
    if any("parsed" in r for r in answered):
        out["unparsed"] = sum(not r["parsed"] for r in answered)
    if scored and all(row.yes_no for row, _, _ in scored):
        out.update(yes_no([(records[0]["prediction"], records[0]["answer"]) for _, _, records in scored]))
    if left:
        out["left"] = left
    return out


def _categories(scored: list, field: str) -> dict:
    """{name: {n, correct, accuracy, ci95}} by the rows' `field` (category or l2_category)."""
    counts: dict[str, list[int]] = {}
    for row, ok, _ in scored:
        name = getattr(row, field)
        if name is not None:
            counts.setdefault(name, [0, 0])
            counts[name][0] += 1
            counts[name][1] += ok
    return {name: {"n": n, "correct": k, "accuracy": k / n, "ci95": list(wilson(k, n))}
            for name, (n, k) in sorted(counts.items())}
