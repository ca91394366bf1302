"""Multi-process data-parallel training on CPU-only machines (gloo)."""
from mmdet3d.registry import MODEL_WRAPPERS
from mmengine.model import MMDistributedDataParallel


@MODEL_WRAPPERS.register_module()
class XrayDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's :class:`~mmengine.model.MMDistributedDataParallel` that also wraps a
    model on the CPU.

    Why a subclass: mmengine's ``Runner.wrap_model`` always passes
    ``device_ids=[LOCAL_RANK]``, which PyTorch's DDP refuses for a CPU module
    ("device_ids ... only work with single-device/multiple-device GPU modules").
    This class drops ``device_ids`` (and ``output_device``) when the module's
    parameters are on the CPU; on a GPU it is mmengine's class unchanged.
    ``tools/train.py`` selects it (``model_wrapper_cfg``) for a distributed run
    without CUDA, together with the gloo backend.
    """

    def __init__(self, module, **kwargs) -> None:
        param = next(module.parameters(), None)
        if param is not None and param.device.type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module=module, **kwargs)
