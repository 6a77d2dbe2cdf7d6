"""SASR (arXiv 2505.13026): SFT warm-up, then a step-wise stochastic switch between SFT and GRPO.

Source status: only the paper's abstract could be read. The step rule is its Algorithm 1 as
reconstructed by two independent third-party readings; γ, W and β are unknown and are ours to set
(`sasr_gamma`, `sasr_warmup_steps`, `beta`). The rule is `switch_probability` below; point
`sasr_rule` at a function of your own (module:function or file.py:function) to try another.

1. Steps 1..W are SFT; the last one's gradient norm (global L2, before clipping) is G_warmup.
2. Every later step: p_t = G_sft / (G_sft + γ·G_warmup), with G_sft the norm of the most recent SFT
   step; α ~ U(0, 1) from the run's seeded generator; α < p_t -> one SFT step, else one GRPO step.
   While SFT gradients are large (far from the demonstrations) SFT is chosen often; as they shrink
   GRPO takes over; if the policy drifts away from the demonstrations, SFT returns.
3. GRPO steps carry β·KL(π_θ‖π_ref), π_ref the model before training (or after warm-up:
   `sasr_reference`); the exact KL to π_ref is logged every step (`kl_ref`).
The controller's state, generator included, is checkpointed, so a resumed run makes the same choices.
"""

import functools
import math
import random

from ..config import ConfigError
from ..data import Example
from ..rewards import RewardError, load_reward

from .base import Method, Metrics, State, StepContext, StepKind, only

# β is unknown from the paper; 0.04 is DeepSeekMath's GRPO value. A recipe or override wins.
PRESET = {"beta": 0.04}


def switch_probability(g_sft: float, g_warmup: float, gamma: float) -> float:
    """p_t = G_sft / (G_sft + γ·G_warmup): the probability that step t is an SFT step."""
    return g_sft / (g_sft + gamma * g_warmup)


@functools.lru_cache(maxsize=None)
def load_rule(spec: str):
    """The step rule named by `sasr_rule` (imported once per run)."""
    try:
        return load_reward(spec)  # the same module:function / file.py:function loader as rewards
    except RewardError as exc:
        raise ConfigError(f"sasr_rule: {str(exc).replace('reward function', 'function')}") from exc


def needs_reference(config) -> bool:
    return config.sasr_reference == "initial"  # "warmup": snapshot_reference() at the end of warm-up


def init_state(config, train_size: int) -> dict:
    load_rule(config.sasr_rule)  # a bad rule fails before training starts
    return {"g_warmup": None, "g_sft": None, "rng": random.Random(config.seed).getstate(), "mode": None, "p": None}


def choose(state: dict, rule, gamma: float) -> tuple[str, float]:
    """Draw this step's mode from the controller state (advancing its generator): (mode, p_t)."""
    p = float(rule(state["g_sft"], state["g_warmup"], gamma))
    generator = random.Random()
    generator.setstate(state["rng"])
    alpha = generator.random()
    state["rng"] = generator.getstate()
    return ("sft" if alpha < p else "grpo"), p


def plan(config, step: int, state: dict) -> StepKind:
    """This step's mode: SFT during warm-up (until a finite G_warmup is read), else the coin (Alg. 1)."""
    if step < config.sasr_warmup_steps or state["g_warmup"] is None:
        state["mode"], state["p"] = "sft", 1.0
    else:
        state["mode"], state["p"] = choose(state, load_rule(config.sasr_rule), config.sasr_gamma)
    return StepKind.SFT if state["mode"] == "sft" else StepKind.POLICY


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    metrics = trainer.sft_backward(examples) if kind is StepKind.SFT else trainer.grpo_backward(examples)
    return {**metrics, "sasr/mode": state["mode"], "sasr/p_sft": state["p"]}


def after_step(trainer: StepContext, state: State, metrics: Metrics) -> None:
    """Read the SFT step's gradient norm (G_sft; at the last warm-up step also G_warmup)."""
    cfg = trainer.config
    # A skipped (non-finite) step's norm is not a measurement: the controller keeps its last finite one.
    if state["mode"] == "sft" and math.isfinite(metrics["grad_norm"]):
        state["g_sft"] = metrics["grad_norm"]
        if state["g_warmup"] is None and trainer.step >= cfg.sasr_warmup_steps:
            state["g_warmup"] = metrics["grad_norm"]
            if cfg.sasr_reference == "warmup":
                trainer.snapshot_reference()
    if state["g_warmup"] is not None:
        metrics["sasr/g_sft"] = state["g_sft"]
        metrics["sasr/g_warmup"] = state["g_warmup"]


METHOD = Method(name="sasr", plan=plan, step=step, kinds=only(StepKind.SFT, StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, init_state=init_state,
                needs_reference=needs_reference, after_step=after_step, preset=PRESET,
                snapshots_reference=lambda config: config.sasr_reference == "warmup")
