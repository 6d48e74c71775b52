"""The MAE transformer's building blocks: attention (fused qkv, through transformers' attention interface), the
MLP, stochastic depth and the pre-norm block, in the official / timm layout (`norm1`, `attn.qkv`, `attn.proj`,
`norm2`, `mlp.fc1`, `mlp.fc2`)."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_mae import MAEConfig


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain matmul + softmax attention; returns (B, N, H, hd) and the attention weights.

    The scale goes on the query (N x hd values, not N x N), and the softmax runs in the input's dtype: its
    kernels accumulate in fp32 anyway, and bf16 weights are what the second matmul takes, so no fp32 copy
    of the N x N weights is made or kept for backward."""
    weights = torch.matmul(query * scaling, key.transpose(-2, -1)).softmax(dim=-1)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2), weights


class MAEAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through transformers' attention interface."""

    def __init__(self, config: MAEConfig, dim: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (B, H, N, hd) each
        implementation = "eager" if output_attentions else self.config._attn_implementation
        if (implementation == "sdpa" and query.device.type == "cpu" and query.dtype == torch.bfloat16
                and torch.is_grad_enabled()):
            implementation = "eager"  # bf16 SDPA backward is 2-8x slower than matmul+softmax on CPUs
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)
        out, weights = attention(self, query, key, value, None, scaling=self.scaling, dropout=0.0)
        return self.proj(out.reshape(batch, length, dim)), weights


class MAEMLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class MAEBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block (timm layout: norm1, attn, norm2, mlp)."""

    def __init__(self, config: MAEConfig, dim: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = MAEAttention(config, dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MAEMLP(dim, mlp_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        attn_out, weights = self.attn(self.norm1(x), output_attentions)
        x = x + self.drop_path(attn_out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights
