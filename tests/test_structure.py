"""Imports flow one way (no circles; config and registry import nothing else of sftrl; rewards never
import the sandbox), and the sandbox plugs in through the registry exactly as a user's own task does."""

import ast
import json
import sys
from pathlib import Path

import pytest

from sftrl import registry

SRC = Path(__file__).resolve().parents[1] / "src" / "sftrl"


def module_imports() -> dict[str, set[str]]:
    """sftrl module (top level: 'rewards' for sftrl.rewards.*) -> the sftrl modules it imports, at any depth
    of its code (a function-level import is an import too)."""
    edges: dict[str, set[str]] = {}
    for file in SRC.rglob("*.py"):
        parts = file.relative_to(SRC).with_suffix("").parts
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        name = parts[0] if parts[0] != "__init__" else "sftrl"
        targets = edges.setdefault(name, set())
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(package)[:len(package) - (node.level - 1)]
                    full = base + (node.module.split(".") if node.module else [])
                    candidates = [full] if full else [[alias.name] for alias in node.names]
                else:
                    candidates = [node.module.split(".")[1:]] if node.module.startswith("sftrl.") else (
                        [[alias.name] for alias in node.names] if node.module == "sftrl" else [])
            elif isinstance(node, ast.Import):
                candidates = [a.name.split(".")[1:] for a in node.names if a.name.startswith("sftrl.")]
            else:
                continue
            for candidate in candidates:
                if candidate and candidate[0] != name:
                    targets.add(candidate[0])
    return edges


def test_imports_have_no_circles():
    edges = module_imports()
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_config_registry_and_rewards_import_only_what_comes_before_them():
    edges = module_imports()
    assert edges["registry"] == set()
    assert edges["config"] <= {"errors"}
    assert "methods" not in edges["config"] and "sandbox" not in edges["rewards"]
    assert not {"trainer", "cli"} & (edges["analyze"] | edges["evaluate"] | edges["grading"] | edges["eval_metrics"]
                                     | edges["compare_eval"] | edges["compare_plan"] | edges["report"] | edges["methods"]
                                     | edges["sources"] | edges["prompt_sampler"])


def test_a_user_plugin_registers_a_dataset_and_its_verifier_like_the_sandbox(tmp_path, monkeypatch):
    plugin = tmp_path / "toy_plugin.py"
    plugin.write_text(
        "from sftrl.registry import register_dataset, register_reward\n\n"
        "def toy_rows(split):\n"
        "    return [{'prompt': f'{split}: say {i}', 'answer': str(i)} for i in range(3)]\n\n"
        "def toy_verifier(prompts, completions, answer, **kwargs):\n"
        "    return [float(c.strip().endswith(a)) for c, a in zip(completions, answer)]\n\n"
        "register_reward('toy_verifier', toy_verifier)\n"
        "register_dataset('toy', toy_rows, verifier='toy_verifier', default_eval='toy:test')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from sftrl.data import load_examples
    from sftrl.grading import grader_for, grade_samples, build_questions
    from sftrl.validate import load_config

    config = load_config(overrides={"plugins": ["toy_plugin"], "train_data": "toy", "method": "grpo"})
    examples = load_examples(config.train_data, "train")
    assert [e.prompt for e in examples] == ["train: say 0", "train: say 1", "train: say 2"]
    assert load_examples("toy:test")[0].prompt == "test: say 0"
    assert grader_for(examples[0]) == "toy_verifier" and registry.dataset("toy").default_eval == "toy:test"
    questions = build_questions(examples, "toy", k=1)
    assert grade_samples(questions, [["0"], ["2"], ["it is 2"]]) == [[1.0], [0.0], [1.0]]
    # The sandbox is registered the same way, by its own module.
    assert registry.dataset("sandbox").verifier == "sandbox" and registry.reward("sandbox").__module__ == \
        "sftrl.sandbox.plugin"
    sys.modules.pop("toy_plugin", None)


def test_registering_a_taken_name_is_refused():
    with pytest.raises(registry.RegistryError, match="reward 'math' is already registered"):
        registry.register_reward("math", lambda prompts, completions, **kw: [0.0] * len(completions))
    with pytest.raises(registry.RegistryError, match="without ':'"):
        registry.register_dataset("a:b", lambda split: [])
    assert json.dumps(sorted(registry.reward_names()))  # names are plain strings


def test_the_trainer_offers_every_primitive_a_method_may_call_with_the_same_signature():
    """methods/base.py's StepContext protocol is the contract; the Trainer implements each call as declared."""
    import inspect

    from sftrl.methods.base import StepContext
    from sftrl.trainer import Trainer

    declared = {name: member for name, member in vars(StepContext).items()
                if inspect.isfunction(member) and not name.startswith("_")}
    assert {"sft_backward", "rollouts", "policy_backward", "gather_rows", "draw_demonstrations",
            "extra_optimizer_step"} <= set(declared)
    for name, member in declared.items():
        ours = inspect.signature(getattr(Trainer, name))
        theirs = inspect.signature(member)
        assert list(ours.parameters) == list(theirs.parameters), name
        assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()], name
    assert set(StepContext.__annotations__) == {"config", "step"}
