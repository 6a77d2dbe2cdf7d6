"""ReLIFT (arXiv 2506.07527): mostly RL, with SFT on the prompts RL cannot solve yet.

Every step is a full GRPO step (all-wrong groups stay in, with zero advantage). A prompt whose G
rollouts all have reward 0 is pushed, with its demonstration, into a buffer. After the GRPO update, if
the buffer holds at least M = `sft_batch_size` entries, one SFT update runs on the M newest and removes
them (at most one per step; the released code's order, the paper is silent). The SFT update minimises
L_SFT - `relift_sft_entropy_coef`·(mean token entropy) with a separate AdamW (`sft_learning_rate`,
`relift_sft_weight_decay`, clip `relift_sft_max_grad_norm`). The buffer (training-set positions, in
order), both optimizers' states and the count of SFT updates are checkpointed; the released code keeps
the buffer in memory only. With several processes the buffer is global: every process gathers every
process's failed prompts in the step's prompt order, so each holds the same buffer.
"""

from ..data import Example

from .base import (Method, Metrics, OptimizerSpec, State, StepContext, StepKind, always, grpo_loss, only,
                   run_learning_rate)

# The scripts' RL settings (lr 1e-6 is in recipes/paper-relift.yaml).
PRESET = {"loss_type": "dr_grpo", "scale_rewards": "none", "clip_ratio": False, "beta": 0.0, "max_grad_norm": 0.7}


def all_failed(rewards, group_size: int) -> list[bool]:
    """Per prompt: every one of its G rollouts has reward 0 (an unscorable one is not a failure)."""
    return (rewards == 0).view(-1, group_size).all(-1).tolist()


def init_state(config, train_size: int) -> dict:
    return {"buffer": [], "sft_updates": 0}


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config


    rollouts = trainer.rollouts(examples)
    failed = all_failed(rollouts.rewards, rollouts.group_size)
    local = [trainer.example_position(e) if f else None for e, f in zip(examples, failed)]
    added = [p for p in trainer.gather_rows(local) if p is not None]
    state["buffer"] += added
    metrics = trainer.policy_backward(rollouts, grpo_loss(cfg))
    return {**metrics, "relift/added": len(added)}


def after_step(trainer: StepContext, state: State, metrics: Metrics) -> None:
    """The SFT update on the M newest buffered prompts, with ReLIFT's own optimizer."""
    cfg = trainer.config
    size = cfg.sft_batch
    metrics["relift/sft_update"] = 0.0
    if len(state["buffer"]) >= size:
        chosen, state["buffer"] = state["buffer"][-size:], state["buffer"][:-size]
        examples = [trainer.train_example(p) for p in trainer.local_rows(chosen)]
        sft = trainer.sft_backward(examples, entropy_coef=cfg.relift_sft_entropy_coef)
        objective = trainer.take_loss()  # this update's optimised loss (L_SFT - coef·entropy)
        rate = run_learning_rate(cfg, trainer.step - 1, StepKind.SFT, state)
        grad_norm, taken = trainer.extra_optimizer_step(rate)
        state["sft_updates"] += taken
        metrics.update(sft)
        metrics.update({"relift/sft_update": float(taken), "relift/sft_objective": objective,
                        "relift/sft_grad_norm": grad_norm, "relift/sft_learning_rate": rate})
    metrics["relift/buffer_size"] = len(state["buffer"])
    metrics["relift/sft_updates"] = state["sft_updates"]


def extra_optimizer(config) -> OptimizerSpec:
    return OptimizerSpec(weight_decay=config.relift_sft_weight_decay, max_grad_norm=config.relift_sft_max_grad_norm)


# The GRPO update at learning_rate; the SFT updates at sft_learning_rate (so --tune tunes both).
METHOD = Method(name="relift", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY, StepKind.SFT),
                needs_demonstrations=True, needs_rollouts=True, init_state=init_state, after_step=after_step,
                extra_optimizer=extra_optimizer, preset=PRESET)
