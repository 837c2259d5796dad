"""MIL heads: one bag of tile features in, slide logits and per-tile scores out; one file per family.

Importing this package registers every head (as timm's ``models/__init__`` imports its architectures), so the
registry itself never imports its entries.
"""

# importing a head module files its heads in the registry
from .abmil import GatedABMIL
from .base import GatedAttention, MILHead, MILOutput
from .clam import CLAMMB, CLAMSB
from .dsmil import DSMIL
from .ensemble import MILEnsemble
from .pooling import MaxPoolMIL, MeanPoolMIL
from .registry import get_head, list_heads, register_head
from .transmil import TransMIL, nystrom_attention

__all__ = ["CLAMMB", "CLAMSB", "DSMIL", "GatedABMIL", "GatedAttention", "MILEnsemble", "MILHead", "MILOutput",
           "MaxPoolMIL", "MeanPoolMIL", "TransMIL", "get_head", "list_heads", "nystrom_attention", "register_head"]
