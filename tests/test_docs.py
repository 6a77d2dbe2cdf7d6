"""The README documents every config field and the commands CI relies on."""

from pathlib import Path

from sftrl.config import markdown_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    """Regenerate with `python -m sftrl.config` when a field changes."""
    assert markdown_reference() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_recipe_loads():
    from sftrl.validate import load_config

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


def test_every_method_has_a_sandbox_and_a_paper_recipe_and_a_readme_row():
    from sftrl.validate import load_config
    from sftrl.methods import METHODS

    readme = (ROOT / "README.md").read_text()
    budgets = set()
    for method in METHODS:
        sandbox = load_config(ROOT / "recipes" / f"sandbox-{method}.yaml")
        paper = load_config(ROOT / "recipes" / f"paper-{method}.yaml")
        assert sandbox.method == paper.method == method
        assert (paper.learning_rate, paper.batch_size, paper.num_generations) == (1e-6, 128, 8)
        budgets.add((sandbox.max_steps, sandbox.batch_size, sandbox.num_generations, sandbox.learning_rate,
                     sandbox.max_completion_length, sandbox.lr_scheduler))
        assert f"| `{method}`" in readme
    assert len(budgets) == 1  # the sandbox recipes share one budget, so their results compare
