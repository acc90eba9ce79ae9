"""The efficient-attention zoo: one interface (`Attention`), one registry."""

from search_spaces.attention.base import Attention
from search_spaces.attention.registry import REGISTRY, KindInfo, attention_class

__all__ = ["Attention", "REGISTRY", "KindInfo", "attention_class"]
