"""slidestream.models: tile encoders.

One registry of named presets (:mod:`.registry`, built-ins in :mod:`.presets`), weight loading from the hub, a
local file or none (:mod:`.weights`), the encoder module that owns preprocessing and pooling (:mod:`.encoder`),
and a weight-free handcrafted baseline (:mod:`.handcrafted`)::

    from slidestream.models import create_encoder
    enc = create_encoder("uni2-h", device="cuda")        # hub weights (gated: log in first)
    feats = enc(tiles_uint8_bhwc)                         # (B, 1536) float32
"""

from .encoder import Encoder, create_encoder, pool_features
from .handcrafted import FEATURE_NAMES as HANDCRAFTED_FEATURE_NAMES
from .handcrafted import HandcraftedEncoder, handcrafted_features
from .registry import EncoderPreset, get_preset, list_encoders, list_encoders_table, register_encoder
from .weights import RandomWeightsWarning, load_state_dict_file

__all__ = [
    "Encoder", "EncoderPreset", "HANDCRAFTED_FEATURE_NAMES", "HandcraftedEncoder", "RandomWeightsWarning",
    "create_encoder", "get_preset", "handcrafted_features", "list_encoders", "list_encoders_table",
    "load_state_dict_file", "pool_features", "register_encoder",
]
