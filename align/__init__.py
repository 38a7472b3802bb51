"""align: staged post-training (SFT -> reasoning -> GRPO) for sparse MoE language models."""

__version__ = "0.1.0"
