"""How the tools build a config's model with a checkpoint's weights and run its test
pipeline on an info pickle (``tools/explain.py``, ``tools/volume_fusion.py``)."""
import os.path as osp

from _checkpoints import load_weights


def register_modules(cfg) -> None:
    """Import the plugin (its modules register themselves) and use the config's scope."""
    from mmengine.registry import init_default_scope
    import projects.mv2d_xray.mv2d_xray  # noqa: F401
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))


def build_model(cfg, checkpoint: str, device: str, trust: bool = False):
    """The config's model with the checkpoint's weights, in eval mode on ``device``
    (safe loading unless ``trust``; a checkpoint that does not fit is refused)."""
    from mmdet3d.registry import MODELS
    model = MODELS.build(cfg.model)
    load_weights(model, checkpoint, trust)
    return model.to(device).eval()


def build_dataset(cfg, infos: str):
    """The config's test dataset and pipeline on ``infos`` (its folder is the data root;
    the config's acquisition is still checked against the data)."""
    from mmdet3d.registry import DATASETS
    dataset_cfg = cfg.test_dataloader.dataset.copy()
    dataset_cfg.update(data_root=osp.dirname(osp.abspath(infos)) + '/',
                       ann_file=osp.basename(infos), test_mode=True)
    return DATASETS.build(dataset_cfg)


def case_inputs(model, dataset, index: int) -> dict:
    """The case through the test pipeline and the model's ``data_preprocessor``:
    ``inputs['imgs']`` ``(1, N, 3, H, W)`` and ``data_samples``."""
    from mmengine.dataset import pseudo_collate
    return model.data_preprocessor(pseudo_collate([dataset[index]]), False)
