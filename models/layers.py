"""Layers that presets name by dotted path so that timm builds published architectures exactly.

Presets stay plain data (importing them loads no torch): a preset's ``kwargs`` name these classes as strings,
``"slidestream.models.layers.CTransPathStem"``, and :func:`slidestream.models.weights.resolve_kwargs` imports them
when the model is built.

- :class:`CTransPathStem`: the convolutional patch embedding CTransPath puts in front of a Swin-T (Wang et al.,
  Medical Image Analysis 2022), with the key layout of its published checkpoint (``patch_embed.proj.{0,1,3,4,6}``,
  ``patch_embed.norm``), written for timm >= 0.9's Swin, which expects channels-last (NHWC) output.
- :class:`LayerNormEps12`: LayerNorm with ``eps=1e-12``, the value of Hugging Face ``ViTModel`` checkpoints
  (Phikon); timm's ViTs use 1e-6, which changes the tokens by about 1e-3 on such weights.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CTransPathStem", "LayerNormEps12"]


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class CTransPathStem(nn.Module):
    """CTransPath's convolutional stem, as a timm Swin ``embed_layer``.

    Two stride-2 3×3 convolutions (no bias) with batch norm and ReLU take the image to a quarter of its size,
    then a 1×1 convolution gives ``embed_dim`` channels and the Swin's patch norm (LayerNorm) follows. Channel
    widths are ``embed_dim // 8`` and ``embed_dim // 4`` (12 and 24 for Swin-T's 96).

    Parameters
    ----------
    img_size : int or (int, int)
        Input size the Swin is built for (224 for CTransPath).
    patch_size : int or (int, int)
        Must be 4: the stem's total stride.
    in_chans : int
        Input channels (3).
    embed_dim : int
        Output channels; a multiple of 8.
    norm_layer : callable, optional
        Norm applied to the ``(B, H/4, W/4, embed_dim)`` output (timm passes LayerNorm when ``patch_norm``).
    strict_img_size : bool
        Refuse inputs of another size than ``img_size`` (the Swin's attention windows are fixed).
    output_fmt : str
        Only ``"NHWC"`` (what timm's Swin asks for).
    device, dtype : optional
        Where and in which dtype to create the parameters (timm's factory keywords).

    Notes
    -----
    ``forward`` maps float ``(B, in_chans, H, W)`` to ``(B, H/4, W/4, embed_dim)``.
    """

    def __init__(self, img_size=224, patch_size=4, in_chans: int = 3, embed_dim: int = 96, norm_layer=None,
                 strict_img_size: bool = True, output_fmt: str = "NHWC", device=None, dtype=None, **_ignored):
        super().__init__()
        if _pair(patch_size) != (4, 4) or embed_dim % 8:
            raise ValueError(f"CTransPathStem needs patch_size 4 and embed_dim divisible by 8, got "
                             f"{patch_size} and {embed_dim}")
        if str(output_fmt).upper() not in ("NHWC", "FORMAT.NHWC"):
            raise ValueError(f"CTransPathStem writes NHWC (timm's Swin layout), not {output_fmt}")
        factory = {"device": device, "dtype": dtype}
        self.img_size = _pair(img_size)
        self.patch_size = (4, 4)
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = False
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False, **factory),
                       nn.BatchNorm2d(c_out, **factory), nn.ReLU(inplace=True)]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, 1, **factory))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim, **factory) if norm_layer else nn.Identity()

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """Follow timm's ``SwinTransformer.set_input_size`` (the stride stays 4)."""
        if patch_size is not None and _pair(patch_size) != (4, 4):
            raise ValueError("CTransPathStem has a fixed stride of 4")
        if img_size is not None:
            self.img_size = _pair(img_size)
            self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def dynamic_feat_size(self, img_size) -> tuple[int, int]:
        """Token grid for an input of ``img_size`` pixels."""
        h, w = _pair(img_size)
        return (h + 3) // 4, (w + 3) // 4

    def forward(self, x: Tensor) -> Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"CTransPath takes {self.img_size} inputs, got {tuple(x.shape[-2:])}")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class LayerNormEps12(nn.LayerNorm):
    """``torch.nn.LayerNorm`` with ``eps=1e-12`` by default (Hugging Face ViT checkpoints such as Phikon)."""

    def __init__(self, normalized_shape, eps: float = 1e-12, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
