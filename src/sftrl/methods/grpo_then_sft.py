"""GRPO→SFT, the reverse two-stage order (SRFT Table 1 reports it as harmful): `grpo_steps` GRPO
steps, then SFT. With `sft_kl_coef` = λ > 0 the SFT steps add λ·KL(π_θ‖π_RL-end), the exact
full-vocabulary KL to the model as it was at the end of RL (RL→SFT_KL), on the demonstration positions.
"""

NEEDS_DEMONSTRATIONS = True
NEEDS_ROLLOUTS = True
LEARNING_RATES = ("learning_rate", "sft_learning_rate")


def step(trainer, state, examples):
    cfg = trainer.config
    if trainer.step < cfg.grpo_steps:
        return trainer.grpo_backward(examples)
    return trainer.sft_backward(examples, kl_coef=cfg.sft_kl_coef)


def after_step(trainer, state, metrics):
    cfg = trainer.config
    if trainer.step == cfg.grpo_steps and cfg.sft_kl_coef > 0:
        trainer.snapshot_reference()  # π_RL-end, kept in checkpoints from here on
