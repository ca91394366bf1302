"""Mixed precision through mmengine's ``AmpOptimWrapper``, also on the CPU (bf16)."""
import logging
from typing import Optional, Union

import torch
from mmdet3d.registry import OPTIM_WRAPPERS
from mmengine.optim import AmpOptimWrapper, OptimWrapper


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 autocast: a bf16 matmul and convolution give finite
    bf16 results. PyTorch runs them on any x86-64 CPU (natively with AVX512-BF16 /
    AMX, on a slow reference path otherwise: :func:`cpu_bf16_native`); a build or CPU
    without bf16 kernels raises here."""
    try:
        with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
            x = torch.ones(2, 1, 4, 4)
            out = torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3)).flatten(1)
            out = out @ torch.ones(out.shape[1], 2)
        return out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    except (RuntimeError, NotImplementedError):
        return False


def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX). Without it
    PyTorch's bf16 convolutions take a slow reference path: measured on the AVX2
    development machine, a demo training step took 56 s in bf16 against 2.2 s in fp32
    (README "Memory, mixed precision and several processes")."""
    probe = getattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


@OPTIM_WRAPPERS.register_module()
class XrayAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's :class:`~mmengine.optim.AmpOptimWrapper` that also runs on the CPU.

    On a CUDA (or NPU/MLU/MUSA) machine it *is* mmengine's wrapper: the same
    ``loss_scale`` (a ``GradScaler``) and ``dtype`` (None = fp16, or ``'bfloat16'``).

    Why a subclass: mmengine 0.10's ``AmpOptimWrapper.__init__`` asserts a GPU (its
    ``GradScaler`` is ``torch.cuda.amp``'s), although its ``optim_context`` (mmengine's
    ``autocast``) supports the CPU with bf16. Without a GPU this class skips that
    assertion, autocasts to bf16 (the only CPU autocast dtype; a warning where the CPU
    has no native bf16, :func:`cpu_bf16_native`) and uses a disabled
    ``GradScaler``: bf16 has fp32's exponent range, so gradients need no loss scaling
    (``backward`` / ``step`` / ``state_dict`` then behave as ``OptimWrapper``'s, and a
    checkpoint resumes on either device).

    Args:
        loss_scale (float | str | dict): ``GradScaler`` settings on a GPU (see
            mmengine); ignored on the CPU. Defaults to ``'dynamic'``.
        dtype (str | torch.dtype, optional): Autocast dtype. On the CPU only None or
            bfloat16. Defaults to None (fp16 on a GPU, bf16 on the CPU).
        **kwargs: :class:`~mmengine.optim.OptimWrapper` arguments (``optimizer``,
            ``clip_grad``, ``accumulative_counts``).

    Raises:
        ValueError: on the CPU, a ``dtype`` other than bfloat16, or a CPU without
            bf16 kernels (:func:`cpu_bf16_supported`).
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None,
                 use_fsdp: bool = False,
                 **kwargs) -> None:
        from mmengine.device import get_device
        if get_device() != 'cpu':
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp,
                             **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(f'optim_wrapper.dtype={dtype}: mixed precision on the CPU '
                             'runs in bfloat16 only (set dtype=None or \'bfloat16\')')
        if not cpu_bf16_supported():
            raise ValueError('--amp / XrayAmpOptimWrapper: this CPU (or PyTorch build) '
                             'has no bf16 kernels; train without --amp')
        if not cpu_bf16_native():
            from mmengine.logging import print_log
            print_log('mixed precision on a CPU without native bf16 (AVX512-BF16 / AMX): '
                      'bf16 convolutions take a slow path here, many times slower than '
                      'fp32; it runs, for testing, not for speed', logger='current',
                      level=logging.WARNING)
        OptimWrapper.__init__(self, **kwargs)   # skips AmpOptimWrapper's GPU assertion
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16
