"""How familiar are the sandbox's demonstration tokens to the base model? Per-token probabilities of the
doubling line in both ``sandbox_double_form`` forms, and of the chain lines for comparison.

Methods whose gradient on a demonstration token scales with the probability the model gives it
(LUFFY's and SRFT's off-policy terms) barely move a token the model gives ~0. The ``double`` family's
doubling line is new in two ways: a new procedure, written with a new token (``*``).
``sandbox_double_form=sum`` writes it with familiar tokens (``10+10=20`` instead of ``10*2=20``), so a
comparison of the two forms separates "new procedure" from "new tokens". This script measures how
unfamiliar each form's tokens are before any training.

It takes the first ``--n`` (default 50) ``double`` demonstrations of the training split (the rows a
run with ``sandbox_double_form`` trains on), scores each with the base model teacher-forced (the
prompt rendered by ``data.render_prompt``, then the demonstration: the probability of each token given
the prompt and everything before it, via ``analyze.response_token_probs``), and prints, for each form,
the median and 10th percentile probability over the tokens of one kind pooled across the
demonstrations: the chain lines (the bracket's steps, ``17+5=22``; the same text in both forms), the
doubling line (``10*2=20`` / ``10+10=20``) and each part of it, and the doubling line's least likely
token (over the demonstrations, each line's minimum). The sandbox's tokenizer is character-level, so
every character is one token.

    HF_HUB_OFFLINE=1 python benchmarks/sandbox_token_familiarity.py            # shipped base model, 50 demonstrations
    python benchmarks/sandbox_token_familiarity.py --n 20 --model runs/x/final  # another model

On CPU it takes under half a minute (100 short sequences through the 10M-parameter model).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from sftrl.analyze import load_scorer, response_token_probs
from sftrl.sources import load_rows

# The first 200 training rows hold 60 doubling problems (skill share 0.3), enough for the default 50;
# training rows are prefix-stable, so these are the first double rows of every default-size run.
ROWS_PER_DOUBLE = 4
FORMS = {"times": "10*2=20", "sum": "10+10=20"}


def line_probs(tokens: list[tuple[str, float]], demonstration: str) -> list[list[float]]:
    """The probabilities of each line's tokens (the line's characters; not the newline after it)."""
    text = "".join(t for t, _ in tokens)
    if not text.startswith(demonstration):
        raise SystemExit(f"token texts do not spell the demonstration: {text!r} vs {demonstration!r}")
    out, start = [], 0
    offsets = np.cumsum([0] + [len(t) for t, _ in tokens])
    for line in demonstration.split("\n"):
        end = start + len(line)
        out.append([p for (_, p), offset in zip(tokens, offsets) if start <= offset < end])
        start = end + 1
    return out


def doubling_parts(line: str) -> list[str]:
    """The part each character of a doubling line (``10*2=20`` or ``10+10=20``) belongs to."""
    left, result = line.split("=")
    operator = "*" if "*" in left else "+"
    first, second = left.split(operator)
    return ([PARTS[0]] * len(first) + [PARTS[1]] + [PARTS[2]] * len(second) + [PARTS[3]]
            + [PARTS[4]] * len(result))


PARTS = ("  first operand (10)", "  operator (* / +)", "  second operand (2 / 10)", "  =", "  result (20)")
ROWS = ("chain lines", "doubling line", *PARTS, "doubling line's minimum")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50, help="number of double demonstrations to score")
    parser.add_argument("--model", default="sandbox", help="model to score with (default: the shipped base model)")
    args = parser.parse_args()

    model, tokenizer = load_scorer(args.model)
    pooled = {form: {row: [] for row in ROWS} for form in FORMS}
    for form in FORMS:
        rows = load_rows("sandbox:train", sandbox_train_size=ROWS_PER_DOUBLE * args.n, sandbox_double_form=form)
        rows = [r for r in rows if r["data_source"] == "sandbox-train-double"][:args.n]
        if len(rows) < args.n:
            raise SystemExit(f"only {len(rows)} double rows in the first {ROWS_PER_DOUBLE * args.n} training rows")
        scored = response_token_probs(model, tokenizer, [(r["prompt"], r["demonstration"]) for r in rows])
        for row, tokens in zip(rows, scored):
            lines = line_probs(tokens, row["demonstration"])
            doubling = lines[-2]  # the last line is \boxed{...}
            pooled[form]["chain lines"] += [p for line in lines[:-2] for p in line]
            pooled[form]["doubling line"] += doubling
            pooled[form]["doubling line's minimum"].append(min(doubling))
            for part, p in zip(doubling_parts(row["demonstration"].split("\n")[-2]), doubling, strict=True):
                pooled[form][part].append(p)

    print(f"model {args.model!r}, the first {args.n} double demonstrations of sandbox:train: the probability of "
          "each token given the prompt and the lines before it")
    print(f"{'':<26}" + "".join(f"{form + ' (' + example + ')':>30}" for form, example in FORMS.items()))
    print(f"{'tokens':<26}" + f"{'n':>8}{'median':>11}{'p10':>11}" * len(FORMS))
    for row in ROWS:
        cells = [(len(v), statistics.median(v), np.percentile(v, 10)) for v in (pooled[f][row] for f in FORMS)]
        print(f"{row:<26}" + "".join(f"{n:>8}{median:>11.2e}{p10:>11.2e}" for n, median, p10 in cells))


if __name__ == "__main__":
    main()
