"""The reference ε-prediction U-Net of annotated-diffusion, parameter- and arithmetic-exact.

Every module name, registration order and parameter shape follows ``shared/SPEC.md`` so that a
``state_dict`` saved by annotated-diffusion's code (the reference) loads here with ``strict=True``, and
every forward step uses the same torch operations in the same order (the attention products are the same
``einsum`` contractions), so outputs agree with the reference's to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Sequence

import torch
from torch import nn

from ..config import FrozenConfig
from ..kernels import linear_attention

__all__ = [
    "Unet",
    "UnetConfig",
    "SinusoidalPositionEmbeddings",
    "ConvNextBlock",
    "ResnetBlock",
    "Block",
    "LinearAttention",
    "Attention",
    "PreNorm",
    "Residual",
    "Downsample",
    "Upsample",
    "set_linear_attention_kernel",
]


@dataclasses.dataclass(frozen=True)
class UnetConfig(FrozenConfig):
    """The constructor arguments of :class:`Unet`, frozen, with a JSON round-trip (for checkpoints)."""

    dim: int
    init_dim: int | None = None
    out_dim: int | None = None
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    channels: int = 3
    with_time_emb: bool = True
    resnet_block_groups: int = 8
    use_convnext: bool = True
    convnext_mult: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim_mults", tuple(int(m) for m in self.dim_mults))


class SinusoidalPositionEmbeddings(nn.Module):
    """emb(t) = [sin(t·f_k), cos(t·f_k)], f_k = exp(−k·ln(10000)/(half−1)); no parameters."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            # half−1 divides the log step: dim 2 divides by zero; an odd dim silently drops a feature.
            raise ValueError(f"time embedding width must be even and >= 4, got dim={dim}")
        self.dim = dim

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        step = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, device=time.device) * -step)
        args = time[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.fn(x, *args, **kwargs) + x


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn  # registered before `norm`, as in the reference, so state_dict order matches
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


def Upsample(dim: int) -> nn.Module:
    return nn.ConvTranspose2d(dim, dim, 4, 2, 1)


def Downsample(dim: int) -> nn.Module:
    return nn.Conv2d(dim, dim, 4, 2, 1)


class Block(nn.Module):
    """Conv3×3 → GroupNorm → optional FiLM (x·(scale+1)+shift) → SiLU."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, *, time_emb_dim: int | None = None, groups: int = 8):
        super().__init__()
        self.mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out)) if time_emb_dim is not None else None
        )
        self.block1 = Block(dim, dim_out, groups=groups)
        self.block2 = Block(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.block1(x)
        if self.mlp is not None and time_emb is not None:
            h = self.mlp(time_emb)[:, :, None, None] + h
        h = self.block2(h)
        return h + self.res_conv(x)


class ConvNextBlock(nn.Module):
    def __init__(
        self, dim: int, dim_out: int, *, time_emb_dim: int | None = None, mult: int = 2, norm: bool = True
    ):
        super().__init__()
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(time_emb_dim, dim)) if time_emb_dim is not None else None
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            nn.GroupNorm(1, dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ds_conv(x)
        if self.mlp is not None and time_emb is not None:
            h = h + self.mlp(time_emb)[:, :, None, None]
        h = self.net(h)
        return h + self.res_conv(x)


class Attention(nn.Module):
    """Softmax attention over all h·w positions (used once, at the bottleneck)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q * self.scale
        sim = torch.einsum("b h d i, b h d j -> b h i j", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b h i j, b h d j -> b h i d", attn, v)
        out = out.permute(0, 1, 3, 2).reshape(b, -1, h, w)  # "b h (x y) d -> b (h d) x y"
        return self.to_out(out)


class LinearAttention(nn.Module):
    """Linear attention: q softmaxed over the head dim, k over positions; O(n·d²) instead of O(n²·d).

    ``kernel`` selects the implementation of the core (everything between ``to_qkv`` and ``to_out``):
    None (the default) runs the reference arithmetic below; "auto", "triton" or "torch" run the fused op
    ``fastddpm.kernels.linear_attention`` with that dispatch (see :func:`set_linear_attention_kernel`).
    """

    kernel: str | None = None

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        self.dim_head = dim_head
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), nn.GroupNorm(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.kernel is not None:
            return self.to_out(linear_attention(self.to_qkv(x), self.heads, self.scale, impl=self.kernel))
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2)
        k = k.softmax(dim=-1)
        q = q * self.scale
        context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
        out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Unet(nn.Module):
    """The annotated-diffusion U-Net: ``model(x, time) -> ε̂`` with ``time`` the per-sample step index.

    Same constructor, defaults, ``state_dict`` and arithmetic as the reference (see ``shared/SPEC.md``).
    Inputs must have ``channels`` channels and a height and width divisible by ``2**(len(dim_mults)-1)``.
    """

    def __init__(
        self,
        dim: int,
        init_dim: int | None = None,
        out_dim: int | None = None,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        channels: int = 3,
        with_time_emb: bool = True,
        resnet_block_groups: int = 8,
        use_convnext: bool = True,
        convnext_mult: int = 2,
    ):
        super().__init__()
        self.config = UnetConfig(
            dim=dim,
            init_dim=init_dim,
            out_dim=out_dim,
            dim_mults=tuple(dim_mults),
            channels=channels,
            with_time_emb=with_time_emb,
            resnet_block_groups=resnet_block_groups,
            use_convnext=use_convnext,
            convnext_mult=convnext_mult,
        )
        _check_config(self.config)

        self.channels = channels
        init_dim = init_dim if init_dim is not None else dim // 3 * 2
        self.init_conv = nn.Conv2d(channels, init_dim, 7, padding=3)

        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.num_resolutions = len(in_out)
        # The down path halves the resolution L−1 times and the up path doubles it L−1 times.
        self.size_divisor = 2 ** (self.num_resolutions - 1)

        if use_convnext:
            block_klass = partial(ConvNextBlock, mult=convnext_mult)
        else:
            block_klass = partial(ResnetBlock, groups=resnet_block_groups)

        if with_time_emb:
            time_dim = dim * 4
            self.time_mlp = nn.Sequential(
                SinusoidalPositionEmbeddings(dim),
                nn.Linear(dim, time_dim),
                nn.GELU(),
                nn.Linear(time_dim, time_dim),
            )
        else:
            time_dim = None
            self.time_mlp = None

        self.downs = nn.ModuleList([])
        self.ups = nn.ModuleList([])
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= self.num_resolutions - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        block_klass(dim_in, dim_out, time_emb_dim=time_dim),
                        block_klass(dim_out, dim_out, time_emb_dim=time_dim),
                        Residual(PreNorm(dim_out, LinearAttention(dim_out))),
                        Downsample(dim_out) if not is_last else nn.Identity(),
                    ]
                )
            )

        mid_dim = dims[-1]
        self.mid_block1 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)
        self.mid_attn = Residual(PreNorm(mid_dim, Attention(mid_dim)))
        self.mid_block2 = block_klass(mid_dim, mid_dim, time_emb_dim=time_dim)

        # Every up stage upsamples (there are L−1 of them), matching the reference: its `is_last` test
        # compares against L−1 but the index only reaches L−2.
        for dim_in, dim_out in reversed(in_out[1:]):
            self.ups.append(
                nn.ModuleList(
                    [
                        block_klass(dim_out * 2, dim_in, time_emb_dim=time_dim),
                        block_klass(dim_in, dim_in, time_emb_dim=time_dim),
                        Residual(PreNorm(dim_in, LinearAttention(dim_in))),
                        Upsample(dim_in),
                    ]
                )
            )

        out_dim = out_dim if out_dim is not None else channels
        self.final_conv = nn.Sequential(block_klass(dim, dim), nn.Conv2d(dim, out_dim, 1))

    @classmethod
    def from_config(cls, config: UnetConfig) -> "Unet":
        return cls(**dataclasses.asdict(config))

    def check_input(self, x: torch.Tensor, time: torch.Tensor) -> None:
        """Raise a ValueError naming the expected value when ``x``/``time`` cannot go through the net."""
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, channels, height, width); got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels; this Unet expects channels={self.channels}")
        height, width = x.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {self.size_divisor} "
                f"(2**(len(dim_mults)-1) for dim_mults={self.config.dim_mults})"
            )
        if self.time_mlp is not None and (time.ndim != 1 or time.shape[0] != x.shape[0]):
            raise ValueError(
                f"time must be a 1-D tensor of {x.shape[0]} step indices (one per sample); "
                f"got shape {tuple(time.shape)}"
            )

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        self.check_input(x, time)
        x = self.init_conv(x)
        t = self.time_mlp(time) if self.time_mlp is not None else None

        skips = []
        for block1, block2, attn, downsample in self.downs:
            x = block1(x, t)
            x = block2(x, t)
            x = attn(x)
            skips.append(x)
            x = downsample(x)

        x = self.mid_block1(x, t)
        x = self.mid_attn(x)
        x = self.mid_block2(x, t)

        for block1, block2, attn, upsample in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)
            x = block1(x, t)
            x = block2(x, t)
            x = attn(x)
            x = upsample(x)

        return self.final_conv(x)


def set_linear_attention_kernel(model: nn.Module, kernel: str | None) -> nn.Module:
    """Route every :class:`LinearAttention` in ``model`` through the fused op with dispatch ``kernel``
    ("auto", "triton", "torch"), or back to the reference arithmetic with None. Returns ``model``."""
    if kernel is not None and kernel not in ("auto", "triton", "torch"):
        raise ValueError(f"kernel must be None, 'auto', 'triton' or 'torch', got {kernel!r}")
    for module in model.modules():
        if isinstance(module, LinearAttention):
            module.kernel = kernel
    return model


def _check_config(cfg: UnetConfig) -> None:
    """Reject configurations the reference's architecture cannot build, naming the expected value."""
    if cfg.with_time_emb and (cfg.dim < 4 or cfg.dim % 2):
        raise ValueError(f"dim must be even and >= 4 (it is the sinusoidal time-embedding width), got dim={cfg.dim}")
    if cfg.dim < 3 or (cfg.init_dim is not None and cfg.init_dim < 1):
        raise ValueError(f"dim must be >= 3 (init_dim defaults to dim // 3 * 2) and init_dim >= 1, got dim={cfg.dim}")
    if not cfg.dim_mults:
        raise ValueError("dim_mults must name at least one resolution, e.g. (1, 2, 4)")
    if cfg.dim_mults[0] != 1:
        # The final block is block(dim → dim) and receives the first stage's dim·dim_mults[0] channels.
        raise ValueError(f"dim_mults must start with 1 (the final block takes dim channels); got {cfg.dim_mults}")
    if cfg.channels < 1:
        raise ValueError(f"channels must be >= 1, got {cfg.channels}")
    if not cfg.use_convnext:
        widths = [cfg.dim * m for m in cfg.dim_mults]  # every GroupNorm'd width (init_dim is only an input)
        bad = [w for w in widths if w % cfg.resnet_block_groups]
        if bad:
            raise ValueError(
                f"ResNet blocks use GroupNorm({cfg.resnet_block_groups}, ·): widths {sorted(set(bad))} "
                f"are not divisible by resnet_block_groups={cfg.resnet_block_groups}"
            )
