"""Numbers are printed through one function, and never as a negative zero: a value that is zero in exact
arithmetic lands on either side of it depending on the CPU, and must read the same on every machine."""

import ast
import math
from pathlib import Path

import pytest

from sftrl.formatting import number

SRC = Path(__file__).resolve().parents[1] / "src" / "sftrl"
FLOAT_TYPES = set("eEfFgGn%")


@pytest.mark.parametrize("value,spec,expected", [
    (-1e-17, ".3f", "0.000"), (-0.0, ".3f", "0.000"), (1e-17, ".3f", "0.000"),
    (-0.0004, "+.1f", "+0.0"), (-0.0001, ">8.1%", "    0.0%"), (-0.0, "", "0.0"), (-0.0, ".3g", "0"),
    (-0.0, ".1e", "0.0e+00"),
    # real negatives and other values are left as format() writes them
    (-0.05, ".1f", "-0.1"), (-0.0006, ".3f", "-0.001"), (-1e-30, ".3g", "-1e-30"), (-0.3, ".0%", "-30%"),
    (float("-inf"), ".3f", "-inf"), (float("nan"), ".3f", "nan"), (7, "", "7"), (3e-5, "g", "3e-05"),
    ("sft", "", "sft"),
])
def test_number_never_writes_a_negative_zero(value, spec, expected):
    assert number(value, spec) == expected


def test_every_float_printed_by_sftrl_goes_through_number():
    """No f-string in src/sftrl formats a float itself (a '.3f', '.1%', 'g' spec): each goes through
    formatting.number, so no output path can print -0.000."""
    offenders = []
    for file in sorted(SRC.rglob("*.py")):
        if file.name == "formatting.py":
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
                spec = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.format_spec.values)
                if spec[-1:] in FLOAT_TYPES:
                    offenders.append(f"{file.relative_to(SRC)}:{node.lineno} :{spec}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                    and isinstance(node.func.value, ast.Constant) and "{:" in str(node.func.value.value)):
                offenders.append(f"{file.relative_to(SRC)}:{node.lineno} str.format")
    assert offenders == []


def test_the_map_command_prints_a_coordinate_on_the_wrong_side_of_zero_as_zero(monkeypatch, capsys, tmp_path):
    """What another CPU printed for the start model of a run: (0.000,-0.000)."""
    from sftrl import analyze
    from sftrl.cli import main

    result = {"runs": [{"label": "static-seed0", "points": [
        {"step": 0, "xy": (0.0, -1.3e-17)}, {"step": 2, "xy": (-0.0, 0.0421)}, {"step": 4, "xy": (-0.0416, -0.0)}]}]}
    monkeypatch.setattr(analyze, "analyze_map", lambda *args, **kwargs: result)
    monkeypatch.setattr(analyze, "probe_pairs", lambda *args, **kwargs: [])
    refs = [str(tmp_path)] * 3
    monkeypatch.setattr("sftrl.models.resolve_model_path", lambda name, what="model": name)
    assert main(["analyze", "map", "--references", *refs, "--runs", str(tmp_path), "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "static-seed0: 0:(0.000,0.000) -> 2:(0.000,0.042) -> 4:(-0.042,0.000)" in out
    assert "-0.000" not in out


def test_tables_print_no_negative_zero(tmp_path):
    from sftrl import compare
    from sftrl.report import markdown_table

    # Two methods whose paired difference is zero up to rounding noise of either sign.
    results = [{"method": m, "seed": s, "in-dist": {"avg@k": v}, "ood": {"avg@k": v}}
               for m, values in (("a", [0.5, 0.25, 0.75]), ("b", [0.5 + 1e-12, 0.25 + 2e-12, 0.75 + 1e-12]))
               for s, v in enumerate(values)]
    diffs = compare.differences_table(results, k=4)
    assert diffs.splitlines()[2:] == ["| a − b | +0.0 ± 0.0 | +0.0 ± 0.0 |"]  # -1e-10 points: was -0.0
    table = markdown_table([{"label": "grpo", "reward_last": -1e-17, "entropy_first": -0.0, "acc_after": -1e-12}])
    assert "-0" not in table and "| grpo |" in table
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in table.splitlines()[2].strip("|").split("|"))))
    reward = cells["reward (last 10)"]
    assert math.isclose(float(reward), 0.0) and reward == "0.000" and cells["acc. after"] == "0.0%"
