"""mv2d-xray plugin: training-engine pieces that mmengine lacks on the CPU (each module
registers itself in mmdet3d's registries): mixed precision with bf16 on the CPU and
multi-process training with gloo on CPU-only machines."""
from projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper import (XrayAmpOptimWrapper,
                                                                   cpu_bf16_native,
                                                                   cpu_bf16_supported)
from projects.mv2d_xray.mv2d_xray.engine.distributed import XrayDistributedDataParallel

__all__ = [
    'XrayAmpOptimWrapper', 'XrayDistributedDataParallel', 'cpu_bf16_native',
    'cpu_bf16_supported'
]
