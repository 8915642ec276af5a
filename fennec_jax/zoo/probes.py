"""A new task's probes: the measured scores of models already fine-tuned on it.

Given as text, ``model=score,model=score`` (a model name may itself hold ``=``: the last one
splits), or as the path of a UTF-8 CSV file with columns ``model,score`` (a leading byte-order
mark is ignored). Scores are in the zoo's units.
"""

from __future__ import annotations

import csv
import os

__all__ = ["ProbesError", "parse_probes"]


class ProbesError(ValueError):
    """Probes that cannot be read; the message names the item or file line and what was expected."""


def parse_probes(text: str | None) -> dict[str, float]:
    """``{model: score}`` from ``model=score,...`` or a CSV file with columns model,score;
    a bad item, a non-number or a model given twice is a :class:`ProbesError` naming it."""
    if not text:
        return {}
    if os.path.isfile(text):
        try:
            with open(text, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except UnicodeDecodeError:
            raise ProbesError(f"--probes={text}: expected a UTF-8 CSV file") from None
        except csv.Error as err:
            raise ProbesError(f"--probes={text}: not a readable CSV file ({err})") from None
        if not rows or not {"model", "score"} <= set(rows[0]):
            raise ProbesError(f"--probes={text}: expected a CSV with columns model,score")
        items = [(row["model"], row["score"], f"{text} line {i + 2}") for i, row in enumerate(rows)]
    else:
        items = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            model, sep, score = item.rpartition("=")
            if not sep or not model:
                raise ProbesError(f"--probes: {item!r} is not model=score; expected model=score,... or a CSV file")
            items.append((model, score, f"--probes {item}"))
    out = {}
    for model, score, where in items:
        if model in out:
            raise ProbesError(f"{where}: model {model!r} given twice")
        try:
            out[model] = float(score)
        except (TypeError, ValueError):
            raise ProbesError(f"{where}: score {score!r} is not a number") from None
    return out
