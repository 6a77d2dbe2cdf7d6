"""sftrl: supervised fine-tuning and GRPO, combined (SASR, SRFT, LUFFY and the baselines)."""

__version__ = "0.1.0"
