"""Multiple-instance learning heads: one bag of tile features in, slide logits and per-tile scores out.

A *bag* is the feature matrix of one slide, a float tensor of shape ``(N, D)`` (``N`` tiles, ``D`` encoder
dimensions). Every head maps it to a :class:`MILOutput` with slide ``logits`` of shape ``(K,)`` and
``instance_scores`` of shape ``(N,)`` (attention weights or instance probabilities, for heatmaps). Heads are
built by name through one registry, :func:`get_head`, and list themselves with :func:`list_heads`.

Conventions shared by all heads
-------------------------------
* ``instance_scores`` describe the *reported class*: class 1 when ``n_classes == 2`` (so heatmaps always show
  the evidence for "tumour" whatever the slide's prediction), otherwise the predicted class.
* Heads with several scores per tile put the full ``(N, K)`` matrix in ``extras["class_scores"]``.
* Extra training losses come from ``head.auxiliary_loss(output, label)``, already weighted, to be *added* to
  the bag cross-entropy; it is a zero tensor for heads without one.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "MILOutput",
    "MILHead",
    "MILEnsemble",
    "GatedABMIL",
    "CLAMSB",
    "CLAMMB",
    "TransMIL",
    "DSMIL",
    "MeanPoolMIL",
    "MaxPoolMIL",
    "register_head",
    "get_head",
    "list_heads",
    "nystrom_attention",
]


@dataclass
class MILOutput:
    """What a head returns for one bag.

    Attributes
    ----------
    logits : torch.Tensor
        ``(K,)`` float, unnormalised slide-level class scores.
    instance_scores : torch.Tensor
        ``(N,)`` float, one score per instance for the reported class (see module docstring).
    extras : dict of str to torch.Tensor
        Head-specific intermediate tensors (attention logits, instance logits, features) that
        ``auxiliary_loss`` and heatmap code may use.
    """

    logits: Tensor
    instance_scores: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class MILHead(nn.Module, abc.ABC):
    """Base class of all heads: holds ``in_dim``, ``n_classes`` and the registry name and kwargs.

    Subclasses implement ``_forward(bag)`` on a validated ``(N, D)`` tensor.
    """

    head_name: str = ""

    def __init__(self, in_dim: int, n_classes: int = 2):
        super().__init__()
        if int(in_dim) < 1:
            raise ConfigError(f"in_dim must be >= 1, got {in_dim}")
        if int(n_classes) < 2:
            raise ConfigError(f"n_classes must be >= 2 (use 2 for binary tasks), got {n_classes}")
        self.in_dim = int(in_dim)
        self.n_classes = int(n_classes)
        # Filled in by get_head so a checkpoint can rebuild the exact same module.
        self.head_kwargs: dict[str, Any] = {}
        # Softmax temperature used by predict(); set from a checkpoint or after calibration.
        self.temperature: float = 1.0

    def forward(self, bag: Tensor) -> MILOutput:
        """Score one bag.

        Parameters
        ----------
        bag : torch.Tensor
            ``(N, D)`` float (a leading batch axis of size 1 is accepted and dropped).

        Returns
        -------
        MILOutput
            ``logits (K,)``, ``instance_scores (N,)``.
        """
        return self._forward(_check_bag(bag, self.in_dim))

    @abc.abstractmethod
    def _forward(self, bag: Tensor) -> MILOutput:
        """Score a validated ``(N, D)`` bag."""

    def auxiliary_loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        """Extra, already weighted training loss for this bag; zero for heads without one."""
        return output.logits.new_zeros(())

    def reported_class(self, logits: Tensor) -> int:
        """Class described by ``instance_scores``: 1 for binary tasks, else the arg-max of ``logits``."""
        if self.n_classes == 2:
            return 1
        return int(logits.detach().argmax())


def _check_bag(bag: Tensor, in_dim: int) -> Tensor:
    if not isinstance(bag, Tensor):
        bag = torch.as_tensor(bag, dtype=torch.float32)
    if bag.ndim == 3 and bag.shape[0] == 1:
        bag = bag[0]
    if bag.ndim != 2:
        raise ConfigError(f"a bag must be a 2-D (N, D) feature matrix, got shape {tuple(bag.shape)}")
    if bag.shape[0] == 0:
        raise ConfigError("the bag has no instances (a slide without tissue tiles?): drop it before training")
    if bag.shape[1] != in_dim:
        raise ConfigError(
            f"bag has {bag.shape[1]} features per instance but the head expects {in_dim}: "
            "use features from the encoder the head was trained with"
        )
    if not bag.is_floating_point():
        bag = bag.float()
    return bag


def _label_index(label: int | Tensor) -> int:
    return int(label.item()) if isinstance(label, Tensor) else int(label)


def _feature_mlp(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Gated attention scorer (Ilse et al. 2018): ``w^T (tanh(V h) * sigmoid(U h))``.

    Maps ``(N, dim)`` to raw (pre-softmax) scores ``(N, n_branches)``. With ``gated=False`` the sigmoid
    gate is dropped (the paper's plain variant).
    """

    def __init__(self, dim: int, attn_dim: int, n_branches: int = 1, dropout: float = 0.0, gated: bool = True):
        super().__init__()
        self.value = nn.Linear(dim, attn_dim)
        self.gate = nn.Linear(dim, attn_dim) if gated else None
        self.drop = nn.Dropout(dropout)
        self.score = nn.Linear(attn_dim, n_branches)

    def forward(self, h: Tensor) -> Tensor:
        a = torch.tanh(self.value(h))
        if self.gate is not None:
            a = a * torch.sigmoid(self.gate(h))
        return self.score(self.drop(a))


# --------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[MILHead]] = {}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_head(name: str) -> Callable[[type[MILHead]], type[MILHead]]:
    """Class decorator that files a head under ``name`` (lower case, ``-`` and ``_`` equivalent)."""

    def deco(cls: type[MILHead]) -> type[MILHead]:
        key = _canonical(name)
        if key in _REGISTRY:
            raise ConfigError(f"a MIL head named {key!r} is already registered")
        cls.head_name = key
        _REGISTRY[key] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    """Names accepted by :func:`get_head`, sorted."""
    return sorted(_REGISTRY)


def get_head(name: str, in_dim: int, n_classes: int = 2, **kwargs: Any) -> MILHead:
    """Build a head by registry name.

    Parameters
    ----------
    name : str
        One of :func:`list_heads` (``"abmil"``, ``"clam_sb"``, ``"clam_mb"``, ``"transmil"``, ``"dsmil"``,
        ``"mean_pool"``, ``"max_pool"``); ``-`` may replace ``_``.
    in_dim : int
        Feature dimension ``D`` of the bags.
    n_classes : int, default 2
        Number of slide classes ``K``.
    **kwargs
        Head hyper-parameters (see each class). ``None`` values are dropped so the head default applies.

    Returns
    -------
    MILHead
        A freshly initialised head; ``head.head_name`` and ``head.head_kwargs`` record how to rebuild it.

    Raises
    ------
    ConfigError
        Unknown name, or a keyword the head does not take.
    """
    key = _canonical(name)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown MIL head {name!r}; choose one of {', '.join(list_heads())}")
    kw = {k: v for k, v in kwargs.items() if v is not None}
    try:
        head = _REGISTRY[key](in_dim, n_classes, **kw)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for MIL head {key!r}: {exc}") from exc
    head.head_kwargs = dict(kw)
    return head


# --------------------------------------------------------------------------------------------- ABMIL


@register_head("abmil")
class GatedABMIL(MILHead):
    """Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018).

    ``h = MLP(x)``; ``a = softmax_N(GatedAttention(h))``; ``z = a^T h``; ``logits = W z``.
    ``instance_scores`` are the attention weights ``a`` (sum to 1).

    Parameters
    ----------
    in_dim, n_classes : int
        Feature dimension ``D`` and number of classes ``K``.
    hidden_dim : int, default 256
        Width of the one-layer feature MLP.
    attn_dim : int, default 128
        Width of the attention scorer.
    dropout : float, default 0.25
        Dropout after the feature MLP and inside the attention scorer.
    gated : bool, default True
        Use the sigmoid gate (the paper's gated variant).
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 256, attn_dim: int = 128,
                 dropout: float = 0.25, gated: bool = True):
        super().__init__(in_dim, n_classes)
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim, 1, dropout, gated)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def _forward(self, bag: Tensor) -> MILOutput:
        h = self.features(bag)
        raw = self.attention(h)[:, 0]
        a = torch.softmax(raw, dim=0)
        logits = self.classifier(a @ h)
        return MILOutput(logits, a, {"attention_logits": raw})


# --------------------------------------------------------------------------------------------- CLAM


class _CLAM(MILHead):
    """Shared body of CLAM-SB and CLAM-MB (Lu et al., Nat. Biomed. Eng. 2021).

    Feature MLP, gated attention with one branch (SB) or one per class (MB), and one binary instance
    classifier per class for the instance-clustering loss: the ``k_sample`` highest-attended instances of the
    true class are pseudo-labelled positive and the ``k_sample`` lowest negative (``k`` shrinks to ``N // 2``
    for small bags so the two sets never overlap). With ``subtyping=True`` the highest-attended instances of
    the other classes are also pushed to negative. The paper's smooth top-1 SVM loss is replaced by cross
    entropy. ``auxiliary_loss`` returns ``inst_weight * mean instance loss``; the paper's 0.7/0.3 mix of bag
    and instance losses corresponds to ``inst_weight = 0.3 / 0.7``; the default 0.3 is close to it.
    """

    n_branches_per_class: bool = False

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, inst_weight: float = 0.3, subtyping: bool = False):
        super().__init__(in_dim, n_classes)
        if k_sample < 1:
            raise ConfigError(f"k_sample must be >= 1, got {k_sample}")
        self.k_sample = int(k_sample)
        self.inst_weight = float(inst_weight)
        self.subtyping = bool(subtyping)
        n_branches = n_classes if self.n_branches_per_class else 1
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim, n_branches, dropout)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(n_classes))

    @abc.abstractmethod
    def _bag_logits(self, pooled: Tensor) -> Tensor:
        """Slide logits ``(K,)`` from the attention-pooled vectors ``(B, H)``."""

    def _forward(self, bag: Tensor) -> MILOutput:
        h = self.features(bag)
        raw = self.attention(h)  # (N, B)
        a = torch.softmax(raw, dim=0)
        pooled = a.transpose(0, 1) @ h  # (B, H)
        logits = self._bag_logits(pooled)
        branch = self.reported_class(logits) if a.shape[1] > 1 else 0
        extras = {"attention_logits": raw, "features": h}
        if a.shape[1] > 1:
            extras["class_scores"] = a
        return MILOutput(logits, a[:, branch], extras)

    def auxiliary_loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        h = output.extras["features"]
        raw = output.extras["attention_logits"]
        label = _label_index(label)
        k = min(self.k_sample, h.shape[0] // 2)
        if k < 1 or self.inst_weight == 0.0:
            return output.logits.new_zeros(())
        losses = []
        for c, clf in enumerate(self.instance_classifiers):
            scores = raw[:, c if raw.shape[1] > 1 else 0]
            if c == label:
                top = torch.topk(scores, k).indices
                bottom = torch.topk(-scores, k).indices
                idx = torch.cat([top, bottom])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            elif self.subtyping:
                idx = torch.topk(scores, k).indices
                target = torch.zeros(k, dtype=torch.long, device=h.device)
            else:
                continue
            losses.append(F.cross_entropy(clf(h[idx]).float(), target))
        return self.inst_weight * torch.stack(losses).mean()


@register_head("clam_sb")
class CLAMSB(_CLAM):
    """CLAM single-branch: one attention map shared by all classes; ``instance_scores`` = that attention.

    Parameters are those of the shared CLAM body: ``hidden_dim=512``, ``attn_dim=256``, ``dropout=0.25``,
    ``k_sample=8``, ``inst_weight=0.3``, ``subtyping=False``.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, **kwargs: Any):
        super().__init__(in_dim, n_classes, **kwargs)
        self.classifier = nn.Linear(self.attention.value.in_features, n_classes)

    def _bag_logits(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled[0])


@register_head("clam_mb")
class CLAMMB(_CLAM):
    """CLAM multi-branch: one attention map and one bag classifier per class.

    ``instance_scores`` are the attention of the reported class; ``extras["class_scores"]`` holds all
    ``(N, K)`` maps. Parameters as :class:`CLAMSB`.
    """

    n_branches_per_class = True

    def __init__(self, in_dim: int, n_classes: int = 2, **kwargs: Any):
        super().__init__(in_dim, n_classes, **kwargs)
        hidden = self.attention.value.in_features
        # Class k is scored only from its own pooled vector: a per-class weight row and bias.
        self.class_weight = nn.Parameter(torch.empty(n_classes, hidden))
        self.class_bias = nn.Parameter(torch.empty(n_classes))
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.class_weight, -bound, bound)
        nn.init.uniform_(self.class_bias, -bound, bound)

    def _bag_logits(self, pooled: Tensor) -> Tensor:
        return (pooled * self.class_weight).sum(dim=1) + self.class_bias


# --------------------------------------------------------------------------------------------- TransMIL


def _iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of a batch of square matrices by the Nyströmformer iteration."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    scale = a.abs().sum(-1).amax(-1) * a.abs().sum(-2).amax(-1)
    z = a.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _segment_means(x: Tensor, m: int) -> Tensor:
    """Means of ``m`` contiguous segments along axis -2, sized like ``torch.tensor_split`` (longer ones first).

    Two reshapes instead of ``m`` small reductions: much faster, especially backwards.
    """
    n = x.shape[-2]
    size, n_long = divmod(n, m)
    cut = n_long * (size + 1)
    lead = x.shape[:-2]
    long = x[..., :cut, :].reshape(*lead, n_long, size + 1, x.shape[-1]).mean(-2)
    short = x[..., cut:, :].reshape(*lead, m - n_long, size, x.shape[-1]).mean(-2)
    return torch.cat([long, short], dim=-2)


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int, pinv_iterations: int = 6) -> Tensor:
    """Nyström approximation of ``softmax(q k^T) v`` (Xiong et al., AAAI 2021).

    Landmarks are the means of ``num_landmarks`` contiguous, nearly equal segments of the sequence, so no
    padding or mask is needed for any length. Computed in float32 even under autocast because the iterative
    pseudo-inverse is not stable in half precision.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``(..., n, d)``; ``q`` already multiplied by the attention scale.
    num_landmarks : int
        Number of landmarks ``m``; when ``m >= n`` the exact attention is returned.
    pinv_iterations : int, default 6
        Iterations of the pseudo-inverse.

    Returns
    -------
    torch.Tensor
        ``(..., n, d)`` float32.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        n = q.shape[-2]
        if num_landmarks >= n:
            return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        q_l = _segment_means(q, num_landmarks)
        k_l = _segment_means(k, num_landmarks)
        kernel_1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)  # (.., n, m)
        kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)  # (.., m, m)
        kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)  # (.., m, n)
        return kernel_1 @ (_iterative_pinv(kernel_2, pinv_iterations) @ (kernel_3 @ v))


class _SelfAttention(nn.Module):
    """Multi-head self-attention that is exact for short sequences and Nyström for long ones."""

    def __init__(self, dim: int, n_heads: int, dropout: float, mode: str, num_landmarks: int,
                 pinv_iterations: int, full_attention_max_tokens: int):
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"hidden_dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.mode = mode
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.full_attention_max_tokens = full_attention_max_tokens

    def uses_nystrom(self, n_tokens: int) -> bool:
        if self.mode == "full":
            return False
        if self.mode == "nystrom":
            return True
        return n_tokens > self.full_attention_max_tokens

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (n, dim)`` → ``(out (n, dim), cls_attention (n,))``, token 0 being the class token."""
        n, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.n_heads, dim // self.n_heads).permute(1, 2, 0, 3)
        q = q * self.scale
        if self.uses_nystrom(n):
            out = nystrom_attention(q, k, v, self.num_landmarks, self.pinv_iterations).to(v.dtype)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        # The class-token row of the exact softmax is O(n): report it whatever approximation ran above.
        cls_attn = torch.softmax((q[:, :1] @ k.transpose(-1, -2)).float(), dim=-1).mean(0)[0]
        return self.proj(out.transpose(0, 1).reshape(n, dim)), cls_attn


class _PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convolutions on the square token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, s, padding=s // 2, groups=dim) for s in (7, 5, 3))

    def forward(self, tokens: Tensor, side: int) -> Tensor:
        cls, feat = tokens[:1], tokens[1:]
        grid = feat.transpose(0, 1).reshape(1, -1, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2)[0].transpose(0, 1)], dim=0)


@register_head("transmil")
class TransMIL(MILHead):
    """TransMIL (Shao et al., NeurIPS 2021): correlated MIL with a transformer and PPEG position encoding.

    ``x → Linear+ReLU → pad to a square grid (repeat the first tokens) → prepend class token →
    attention layer → PPEG → attention layer → LayerNorm → classifier on the class token``.
    Each attention layer is pre-norm with a residual and no MLP, as in the paper.

    Attention: ``attention="auto"`` (default) is exact softmax attention while the sequence has at most
    ``full_attention_max_tokens`` tokens, and Nyström attention (``num_landmarks`` landmarks, default
    ``hidden_dim // 2`` as in the paper) beyond that, where the exact ``n × n`` matrix would not fit.
    Exact attention is both cheaper and exact for small bags; ``"full"`` and ``"nystrom"`` force one.

    ``instance_scores`` are the class token's attention to each instance in the last layer, mean over heads,
    always computed exactly (one row is O(n)); tokens added to fill the grid are dropped.

    Parameters
    ----------
    in_dim, n_classes : int
        Feature dimension ``D`` and number of classes ``K``.
    hidden_dim : int, default 512
    n_heads : int, default 8
    dropout : float, default 0.1
    attention : {"auto", "full", "nystrom"}, default "auto"
    num_landmarks : int, optional
    pinv_iterations : int, default 6
    full_attention_max_tokens : int, default 2048
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 512, n_heads: int = 8,
                 dropout: float = 0.1, attention: str = "auto", num_landmarks: int | None = None,
                 pinv_iterations: int = 6, full_attention_max_tokens: int = 2048):
        super().__init__(in_dim, n_classes)
        if attention not in ("auto", "full", "nystrom"):
            raise ConfigError(f"attention must be 'auto', 'full' or 'nystrom', got {attention!r}")
        landmarks = int(num_landmarks) if num_landmarks else max(1, hidden_dim // 2)
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.randn(1, hidden_dim) * 0.02)
        args = (n_heads, dropout, attention, landmarks, pinv_iterations, full_attention_max_tokens)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn1 = _SelfAttention(hidden_dim, *args)
        self.ppeg = _PPEG(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.attn2 = _SelfAttention(hidden_dim, *args)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def _forward(self, bag: Tensor) -> MILOutput:
        n = bag.shape[0]
        h = self.fc(bag)
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:
            h = torch.cat([h, h[torch.arange(extra, device=h.device) % n]], dim=0)
        x = torch.cat([self.cls_token.to(h.dtype), h], dim=0)
        out, _ = self.attn1(self.norm1(x))
        x = self.ppeg(x + out, side)
        out, cls_attn = self.attn2(self.norm2(x))
        x = x + out
        logits = self.classifier(self.norm(x[0]))
        return MILOutput(logits, cls_attn[1 : n + 1], {})


# --------------------------------------------------------------------------------------------- DSMIL


@register_head("dsmil")
class DSMIL(MILHead):
    """Dual-stream MIL (Li, Li & Eliceiri, CVPR 2021).

    Instance stream: ``c = W_i h`` per instance; its max over instances gives ``extras["max_instance_logits"]``.
    Bag stream: the critical instance of each class (arg-max of ``c``) is the query; attention
    ``A = softmax_N(q(h) q(h_crit)^T / sqrt(d_q))`` pools values ``v(h)`` per class, and a linear layer over the
    ``(K, H)`` pooled matrix (the paper's 1-D convolution spanning the whole embedding) gives ``logits``.

    ``auxiliary_loss`` is ``max_instance_weight * CE(max_instance_logits)``, so training optimises both streams
    as in the paper; ``logits`` are the bag stream (average with the max-instance logits for the paper's
    combined test score). ``instance_scores`` are the attention of the reported class;
    ``extras["class_scores"]`` holds ``A (N, K)``.

    Parameters
    ----------
    in_dim, n_classes : int
    hidden_dim : int, default 256
        Width of the feature MLP.
    query_dim : int, default 128
    dropout : float, default 0.25
    max_instance_weight : float, default 1.0
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 256, query_dim: int = 128,
                 dropout: float = 0.25, max_instance_weight: float = 1.0):
        super().__init__(in_dim, n_classes)
        self.max_instance_weight = float(max_instance_weight)
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(hidden_dim, n_classes)
        self.query = nn.Sequential(nn.Linear(hidden_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim),
                                   nn.Tanh())
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.bag_classifier = nn.Linear(n_classes * hidden_dim, n_classes)
        self.query_scale = query_dim ** -0.5

    def _forward(self, bag: Tensor) -> MILOutput:
        h = self.features(bag)
        inst_logits = self.instance_classifier(h)  # (N, K)
        critical = inst_logits.detach().argmax(dim=0)  # (K,)
        q = self.query(h)
        a = torch.softmax((q @ q[critical].transpose(0, 1)) * self.query_scale, dim=0)  # (N, K)
        pooled = a.transpose(0, 1) @ self.value(h)  # (K, H)
        logits = self.bag_classifier(pooled.reshape(-1))
        extras = {"max_instance_logits": inst_logits.max(dim=0).values, "instance_logits": inst_logits,
                  "class_scores": a}
        return MILOutput(logits, a[:, self.reported_class(logits)], extras)

    def auxiliary_loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        target = torch.tensor([_label_index(label)], device=output.logits.device)
        return self.max_instance_weight * F.cross_entropy(output.extras["max_instance_logits"][None].float(), target)


# --------------------------------------------------------------------------------------------- baselines


class _InstancePool(MILHead):
    """Instance classifier on an optional feature MLP, pooled over instances."""

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 128, dropout: float = 0.25):
        super().__init__(in_dim, n_classes)
        if hidden_dim:
            self.features: nn.Module = _feature_mlp(in_dim, hidden_dim, dropout)
            width = hidden_dim
        else:
            self.features = nn.Identity()
            width = in_dim
        self.classifier = nn.Linear(width, n_classes)

    @abc.abstractmethod
    def _pool(self, inst_logits: Tensor) -> Tensor:
        """Slide logits ``(K,)`` from instance logits ``(N, K)``."""

    def _forward(self, bag: Tensor) -> MILOutput:
        inst_logits = self.classifier(self.features(bag))  # (N, K)
        logits = self._pool(inst_logits)
        probs = torch.softmax(inst_logits.float(), dim=1)
        return MILOutput(logits, probs[:, self.reported_class(logits)],
                         {"instance_logits": inst_logits, "class_scores": probs})


@register_head("mean_pool")
class MeanPoolMIL(_InstancePool):
    """Mean-pooling baseline: slide logits are the mean of instance logits (= classifier on mean features).

    ``instance_scores`` are instance probabilities of the reported class. ``hidden_dim=0`` removes the feature
    MLP (a linear probe on the mean embedding).
    """

    def _pool(self, inst_logits: Tensor) -> Tensor:
        return inst_logits.mean(dim=0)


@register_head("max_pool")
class MaxPoolMIL(_InstancePool):
    """Max-pooling baseline (mi-Net style): a slide is as positive as its most positive instance.

    Class 0 is the reference ("normal"): with instance log-odds ``d_ik = z_ik - z_i0``, the slide logits are
    ``[0, max_i d_i1, ..., max_i d_i(K-1)]``, so for a binary task the slide log-odds are the largest instance
    log-odds. (Taking the max of every class's logits separately lets the class-0 maximum, driven by the
    most normal-looking tile, compete with the evidence and trains poorly.) ``instance_scores`` are instance
    probabilities of the reported class. Parameters as :class:`MeanPoolMIL` but ``dropout=0.5`` by default.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 128, dropout: float = 0.5):
        # Heavier dropout than the other heads: without it the max picks one noise instance per training
        # bag and memorises it (seen on small synthetic sets as folds with AUC far below 0.5).
        super().__init__(in_dim, n_classes, hidden_dim, dropout)

    def _pool(self, inst_logits: Tensor) -> Tensor:
        odds = inst_logits[:, 1:] - inst_logits[:, :1]
        return torch.cat([odds.new_zeros(1), odds.max(dim=0).values])


# --------------------------------------------------------------------------------------------- ensemble


class MILEnsemble(nn.Module):
    """Several heads of one architecture (e.g. cross-validation folds) used as one model.

    ``forward`` returns a :class:`MILOutput` whose ``logits`` are the log of the members' mean class
    probability (each member's logits divided by ``temperature`` first), so ``softmax(logits)`` is the
    ensemble probability; ``instance_scores`` are the members' mean; ``extras["prob_std"] (K,)`` is the
    standard deviation of the members' probabilities (an uncertainty) and ``extras["member_probs"] (M, K)``.
    """

    def __init__(self, members: list[MILHead] | nn.ModuleList, temperature: float = 1.0):
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member model")
        first = members[0]
        for m in members[1:]:
            if (m.head_name, m.in_dim, m.n_classes, m.head_kwargs) != (
                first.head_name, first.in_dim, first.n_classes, first.head_kwargs
            ):
                raise ConfigError("ensemble members must share head name, kwargs, in_dim and n_classes")
        self.members = nn.ModuleList(members)
        self.temperature = float(temperature)

    @property
    def head_name(self) -> str:
        return self.members[0].head_name

    @property
    def head_kwargs(self) -> dict[str, Any]:
        return self.members[0].head_kwargs

    @property
    def in_dim(self) -> int:
        return self.members[0].in_dim

    @property
    def n_classes(self) -> int:
        return self.members[0].n_classes

    def forward(self, bag: Tensor) -> MILOutput:
        outs = [m(bag) for m in self.members]
        probs = torch.stack([torch.softmax(o.logits.float() / self.temperature, dim=0) for o in outs])
        mean = probs.mean(0)
        std = probs.std(0, unbiased=False)
        scores = torch.stack([o.instance_scores.float() for o in outs]).mean(0)
        logits = torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
        return MILOutput(logits, scores, {"prob_std": std, "member_probs": probs})
