"""MV2D's decoder: self-attention over a scene's queries, sparse cross-attention of each
query to the RoI features of its relevant detections.

Built from mmcv's ``MultiheadAttention`` and ``FFN`` bricks (post-norm order
``self_attn -> norm -> cross_attn -> norm -> ffn -> norm``, as PETR/MV2D configure
``PETRTransformerDecoderLayer``). The layers are composed directly rather than through
mmcv's config-driven ``BaseTransformerLayer``: the two attentions see differently
shaped batches (all queries of a scene form one sequence for self-attention, while each
query is its own batch item for cross-attention), which the generic layer cannot
express without MV2D's reshaping wrappers.

:meth:`MV2DXrayTransformer.record_cross_attention` reads the cross-attention weights
(for the explanations of :meth:`MV2DXray.predict`) without touching the decoding: mmcv's
``MultiheadAttention`` calls ``torch.nn.MultiheadAttention`` with ``need_weights=False``;
a forward hook on that inner module runs it a second time on the very same inputs with
``need_weights=True`` and keeps only the weights, so the outputs stay bit-identical.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import xavier_init
from torch import Tensor, nn


class MV2DXrayDecoderLayer(BaseModule):
    """One decoder layer.

    Args:
        embed_dims (int): Channels.
        num_heads (int): Attention heads.
        feedforward_channels (int): FFN hidden size.
        dropout (float): Dropout of the attention weights and outputs.
        ffn_dropout (float): Dropout inside the FFN.
    """

    def __init__(self, embed_dims: int, num_heads: int,
                 feedforward_channels: int, dropout: float,
                 ffn_dropout: float) -> None:
        super().__init__()
        drop = dict(type='Dropout', drop_prob=dropout)
        self.self_attn = MultiheadAttention(
            embed_dims, num_heads, attn_drop=dropout, dropout_layer=drop,
            batch_first=True)
        self.cross_attn = MultiheadAttention(
            embed_dims, num_heads, attn_drop=dropout, dropout_layer=drop,
            batch_first=True)
        self.ffn = FFN(embed_dims, feedforward_channels, ffn_drop=ffn_dropout,
                       dropout_layer=drop)
        self.norms = ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(self, query: Tensor, query_pos: Tensor, key: Tensor,
                key_pos: Tensor, key_padding_mask: Tensor,
                self_attn_mask: Optional[Tensor]) -> Tensor:
        """Args:
            query (Tensor): ``(Q, C)`` query features.
            query_pos (Tensor): ``(Q, C)`` query position embeddings.
            key (Tensor): ``(Q, L, C)`` each query's relevant RoI tokens.
            key_pos (Tensor): ``(Q, L, C)`` their position encodings.
            key_padding_mask (Tensor): ``(Q, L)``, True = ignore.
            self_attn_mask (Tensor, optional): ``(Q, Q)``, True = may not attend
                (queries of different scenes).

        Returns:
            Tensor: ``(Q, C)``.
        """
        query = self.self_attn(
            query[None], query_pos=query_pos[None], key_pos=query_pos[None],
            attn_mask=self_attn_mask)[0]
        query = self.norms[0](query)
        query = self.cross_attn(
            query[:, None], key=key, value=key, query_pos=query_pos[:, None],
            key_pos=key_pos, key_padding_mask=key_padding_mask)[:, 0]
        query = self.norms[1](query)
        return self.norms[2](self.ffn(query))


@MODELS.register_module()
class MV2DXrayTransformer(BaseModule):
    """Stack of :class:`MV2DXrayDecoderLayer` returning every layer's output.

    Args:
        num_layers (int): Decoder layers. Defaults to 6.
        embed_dims (int): Channels. Defaults to 256.
        num_heads (int): Attention heads. Defaults to 8.
        feedforward_channels (int): FFN hidden size. Defaults to 2048.
        dropout (float): Attention dropout. Defaults to 0.1.
        ffn_dropout (float): FFN dropout. Defaults to 0.1.
        with_cp (bool): Gradient checkpointing of each layer (saves memory with
            many views). Defaults to False.
        init_cfg (dict, optional): Defaults to None (Xavier-uniform on every
            weight matrix, as DETR/PETR).
    """

    def __init__(self,
                 num_layers: int = 6,
                 embed_dims: int = 256,
                 num_heads: int = 8,
                 feedforward_channels: int = 2048,
                 dropout: float = 0.1,
                 ffn_dropout: float = 0.1,
                 with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by '
                             f'num_heads ({num_heads})')
        self.num_layers = num_layers
        self.embed_dims = embed_dims
        self.with_cp = with_cp
        self.layers = ModuleList([
            MV2DXrayDecoderLayer(embed_dims, num_heads, feedforward_channels,
                                 dropout, ffn_dropout)
            for _ in range(num_layers)
        ])
        self.post_norm = nn.LayerNorm(embed_dims)

    def init_weights(self) -> None:
        """Xavier-uniform on every weight matrix (DETR's initialisation)."""
        super().init_weights()
        for module in self.modules():
            if hasattr(module, 'weight') and isinstance(
                    module.weight, Tensor) and module.weight.dim() > 1:
                xavier_init(module, distribution='uniform')

    @contextmanager
    def record_cross_attention(self) -> Iterator[List[Tensor]]:
        """Record the cross-attention weights of every layer while active.

        Yields a list that each call of a layer's cross-attention appends to (so one
        decoding appends ``num_layers`` entries, first layer first): its weights
        ``(Q, L)`` averaged over the heads, each row summing to 1 over the keys that
        are not padding (0 on padding). The weights come from a second run of the
        inner ``torch.nn.MultiheadAttention`` on the inputs of the first one, with
        ``need_weights=True`` and without gradients; the decoder's outputs are those
        of the first run, unchanged.

        Raises:
            RuntimeError: on a layer in training mode with attention dropout (the
                weights would be dropped out and not sum to 1).
        """
        weights: List[Tensor] = []

        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict,
                 output) -> None:
            if module.training and module.dropout > 0:
                raise RuntimeError('cross-attention weights are recorded in eval '
                                   'mode only (attention dropout is on)')
            kwargs = dict(kwargs, need_weights=True, average_attn_weights=True)
            with torch.no_grad():
                # .forward, not __call__: the hook must not fire again
                _, attn = module.forward(*args, **kwargs)       # (Q, 1, L)
            weights.append(attn[:, 0])

        handles = [layer.cross_attn.attn.register_forward_hook(hook, with_kwargs=True)
                   for layer in self.layers]
        try:
            yield weights
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, query_pos: Tensor, key: Tensor, key_pos: Tensor,
                key_padding_mask: Tensor,
                self_attn_mask: Optional[Tensor] = None,
                query: Optional[Tensor] = None) -> Tensor:
        """Decode.

        Args:
            query_pos (Tensor): ``(Q, C)`` query position embeddings.
            key (Tensor): ``(Q, L, C)`` RoI tokens per query.
            key_pos (Tensor): ``(Q, L, C)`` token position encodings.
            key_padding_mask (Tensor): ``(Q, L)``, True = padding.
            self_attn_mask (Tensor, optional): ``(Q, Q)``, True = blocked.
            query (Tensor, optional): ``(Q, C)`` the query features the first layer
                starts from; None: zero (DETR, MV2D).

        Returns:
            Tensor: ``(num_layers, Q, C)``, each layer's output after the shared
            final LayerNorm.
        """
        query = torch.zeros_like(query_pos) if query is None else query
        outputs = []
        for layer in self.layers:
            args = (query, query_pos, key, key_pos, key_padding_mask,
                    self_attn_mask)
            if self.with_cp and self.training:
                query = cp.checkpoint(layer, *args, use_reentrant=False)
            else:
                query = layer(*args)
            outputs.append(self.post_norm(query))
        return torch.stack(outputs)
