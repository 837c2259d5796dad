"""slidestream.models: tile encoders.

One registry of named presets (:mod:`.registry`, built-ins in :mod:`.presets`), weight loading from the hub, a
local file or none (:mod:`.weights`), the encoder module that owns preprocessing and pooling (:mod:`.encoder`),
and a weight-free handcrafted baseline (:mod:`.handcrafted`)::

    from slidestream.models import create_encoder
    enc = create_encoder("uni2-h", device="cuda")        # hub weights (gated: log in first)
    feats = enc(tiles_uint8_bhwc)                         # (B, 1536) float32
"""

import importlib

# The registry and the built-in presets are plain data: importing them (``slidestream encoders``) loads no torch.
from . import presets  # noqa: F401  (registers the built-in presets, as timm's models/__init__ does)
from .registry import (BACKEND_TRAITS, BackendTraits, EncoderPreset, get_preset, list_encoders, list_encoders_table,
                       register_encoder)

# What needs torch is loaded on first use (PEP 562).
_WHERE = {
    "Encoder": "encoder", "create_encoder": "encoder", "pool_features": "encoder",
    "HANDCRAFTED_FEATURE_NAMES": "handcrafted", "HandcraftedEncoder": "handcrafted",
    "handcrafted_features": "handcrafted",
    "RandomWeightsWarning": "weights", "load_state_dict_file": "weights", "check_weights": "weights",
}


def __getattr__(name: str):
    if name in _WHERE:
        module = importlib.import_module(f".{_WHERE[name]}", __name__)
        return getattr(module, "FEATURE_NAMES" if name == "HANDCRAFTED_FEATURE_NAMES" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKEND_TRAITS", "BackendTraits", "Encoder", "EncoderPreset", "HANDCRAFTED_FEATURE_NAMES", "HandcraftedEncoder",
    "RandomWeightsWarning", "check_weights", "create_encoder", "get_preset", "handcrafted_features", "list_encoders",
    "list_encoders_table", "load_state_dict_file", "pool_features", "register_encoder",
]
