"""trainers of trl-omni."""

from .perpo_config import PeRPOConfig as PeRPOConfig
from .perpo_trainer import PeRPOTrainer as PeRPOTrainer
