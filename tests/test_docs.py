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


def float_sensitive_tests() -> set[str]:
    """'file::test' of every test marked float_sensitive (by decorator or by the module's pytestmark)."""
    import ast

    marked = set()
    for file in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(file.read_text())
        module_wide = any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
                          and "float_sensitive" in ast.unparse(node.value) for node in tree.body)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and (
                    module_wide or any("float_sensitive" in ast.unparse(d) for d in node.decorator_list)):
                marked.add(f"{file.name}::{node.name}")
    return marked


def test_ci_runs_the_float_sensitive_tests_again_on_other_kernels():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("make test") < ci.index("make test-float")  # the README's command first, as a user runs it
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest-float:", 1)[1].split("\n\n", 1)[0]
    assert "ATEN_CPU_CAPABILITY=$(FLOAT_CAPABILITY)" in recipe and "-m float_sensitive" in recipe
    assert "FLOAT_CAPABILITY ?= default" in makefile
    assert "float_sensitive:" in (ROOT / "pyproject.toml").read_text()  # registered: a typo'd mark is an error
    # The tests that failed, or could fail, on another CPU's floats are among those run again.
    assert {"test_report.py::test_analyze_commands_write_their_files",
            "test_sandbox_learning.py::test_grpo_amplifies_the_latent_strategy_but_cannot_find_the_skill",
            "test_sandbox_learning.py::test_sft_teaches_the_demonstrations",
            "test_rollout.py::test_sampled_tokens_equal_generate_for_the_same_seed_while_no_row_has_finished",
            "test_batching.py::test_shared_prompt_forward_matches_whole_rows_in_logits_loss_and_gradients",
            } <= float_sensitive_tests()


def test_every_recipe_loads():
    from sftrl.validate import load_config

    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


# (learning_rate, batch_size, num_generations) of each paper recipe: the shared setting of SRFT, LUFFY and
# 2604.23747 (1e-6, 128 prompts, 8 rollouts) unless the method's own paper or code says otherwise.
PAPER_SETTINGS = {
    "hpt": (5e-6, 128, 8),  # HPT's exp_scripts/train.sh: LR=5e-6
    "chord": (1e-6, 32, 8),  # CHORD: 32 prompts x 8 + 64 demonstrations (Trinity-RFT mix_chord.yaml); lr tuned in {1e-6, 5e-6, 1e-5}
    "gac": (1e-6, 32, 8),  # GAC's loop is not public: CHORD's batch
    "uft": (1e-6, 256, 4),  # UFT's released code: 256 prompts x 4 rollouts
}


def test_every_method_has_a_sandbox_and_a_paper_recipe_and_a_readme_row():
    from sftrl.validate import load_config
    from sftrl.methods import METHODS

    readme = (ROOT / "README.md").read_text()
    budgets = set()
    for method in METHODS:
        sandbox = load_config(ROOT / "recipes" / f"sandbox-{method}.yaml")
        paper = load_config(ROOT / "recipes" / f"paper-{method}.yaml")
        assert sandbox.method == paper.method == method
        assert (paper.learning_rate, paper.batch_size, paper.num_generations) == PAPER_SETTINGS.get(method, (1e-6, 128, 8))
        budgets.add((sandbox.max_steps, sandbox.batch_size, sandbox.num_generations, sandbox.learning_rate,
                     sandbox.max_completion_length, sandbox.lr_scheduler))
        assert f"| `{method}`" in readme
    assert len(budgets) == 1  # the sandbox recipes share one budget, so their results compare


def test_paper_sft_then_grpo_carries_the_recipe_of_2604_23747():
    from sftrl.validate import load_config

    c = load_config(ROOT / "recipes" / "paper-sft-then-grpo.yaml")
    assert (c.sft_epochs, c.sft_batch_size, c.sft_learning_rate, c.sft_lr_scheduler, c.sft_warmup_ratio,
            c.sft_min_lr_ratio, c.weight_decay, c.adam_beta1, c.adam_beta2) == (3, 64, 5e-5, "cosine", 0.1, 0.1, 0.01,
                                                                                 0.9, 0.999)
    assert (c.rl_steps, c.batch_size, c.num_generations, c.learning_rate, c.lr_scheduler, c.epsilon, c.epsilon_high,
            c.loss_type, c.scale_rewards, c.beta, c.entropy_coef, c.temperature, c.max_completion_length) == (
        500, 128, 8, 1e-6, "constant", 0.2, 0.28, "dapo", "none", 0.0, 0.0, 1.0, 8192)
    assert c.stage_reset_optimizer
