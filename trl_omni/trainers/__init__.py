"""trainers of trl-omni."""

from .perception import PerceptionHead, add_perception_head, get_perception_head
from .pesft_config import PeSFTConfig
from .pesft_trainer import PeSFTTrainer


__all__ = [
    "PeSFTConfig",
    "PeSFTTrainer",
    "PerceptionHead",
    "add_perception_head",
    "get_perception_head",
]
