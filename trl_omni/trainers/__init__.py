"""Trainers of trl-omni: PeSFT (perception-aligned SFT) and PeRPO (perception-calibrated GRPO)."""

from .perception import PerceptionHead, add_perception_head, get_perception_head
from .perpo_config import PeRPOConfig
from .perpo_trainer import PeRPOTrainer
from .pesft_config import PeSFTConfig
from .pesft_trainer import PeSFTTrainer


__all__ = [
    "PeRPOConfig",
    "PeRPOTrainer",
    "PeSFTConfig",
    "PeSFTTrainer",
    "PerceptionHead",
    "add_perception_head",
    "get_perception_head",
]
