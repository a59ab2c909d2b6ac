"""NAT, DiNAT, DiNAT_s and isotropic classifiers, registered with timm on import.

``import classification`` then ``timm.create_model("nat_tiny", pretrained=True)``.
"""

from . import dinat_s, isotropic, nat
from .checkpoint import (
    checkpoint_filter_fn,
    hf_to_original,
    load_checkpoint_file,
    load_pretrained_file,
    original_to_hf,
    resize_rpb,
    save_state_dict,
)
from .dilation import D224, D384, dilation_schedule
from .dinat_s import DiNAT_s
from .isotropic import GlobalAttentionRPB, NATIsotropic
from .layers import NALevel, NATransformerBlock
from .nat import NAT, DiNAT

__all__ = [
    "D224",
    "D384",
    "NAT",
    "DiNAT",
    "DiNAT_s",
    "GlobalAttentionRPB",
    "NALevel",
    "NATIsotropic",
    "NATransformerBlock",
    "checkpoint_filter_fn",
    "dilation_schedule",
    "dinat_s",
    "hf_to_original",
    "isotropic",
    "load_checkpoint_file",
    "load_pretrained_file",
    "nat",
    "original_to_hf",
    "resize_rpb",
    "save_state_dict",
]
