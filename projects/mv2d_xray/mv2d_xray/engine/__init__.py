"""mv2d-xray plugin: training-engine pieces that mmengine lacks (each module registers
itself in mmdet3d's registries): mixed precision with bf16 on the CPU, multi-process
training with gloo on CPU-only machines, and a weight average of part of a model."""
from projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper import (XrayAmpOptimWrapper,
                                                                   cpu_bf16_native,
                                                                   cpu_bf16_supported)
from projects.mv2d_xray.mv2d_xray.engine.distributed import XrayDistributedDataParallel
from projects.mv2d_xray.mv2d_xray.engine.partial_ema import XrayPartialEMA

__all__ = [
    'XrayAmpOptimWrapper', 'XrayDistributedDataParallel', 'XrayPartialEMA',
    'cpu_bf16_native', 'cpu_bf16_supported'
]
