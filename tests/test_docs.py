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
    from sftrl.config import load_config

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)
