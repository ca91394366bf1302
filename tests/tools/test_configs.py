"""The configs in ``configs/mv2d_xray``: they load with their ``custom_imports`` and build,
their settings agree with each other, and the 2D-stage checkpoint initialises the full
model's 2D stage."""
import copy
import glob
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from mmengine.config import Config
from mmengine.registry import init_default_scope

CONFIG_DIR = osp.join(REPO_ROOT, 'configs', 'mv2d_xray')
CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(CONFIG_DIR, '*.py')))
PAPER = 'mv2d_r50_fpn_1xb1-24e_lidc-1024.py'
STAGE_2D = 'mv2d-2d-stage_r50_fpn_1xb1-12e_lidc-1024.py'
DEMO = 'mv2d_r18_fpn_1xb1-30e_demo-256.py'
DEMO_2D = 'mv2d-2d-stage_r18_fpn_1xb1-12e_demo-256.py'
BLADES = 'mv2d_r50_fpn_1xb1-24e_blades-512.py'
BLADES_2D = 'mv2d-2d-stage_r50_fpn_1xb1-12e_blades-512.py'
BLADES_DEMO = 'mv2d_r18_fpn_1xb1-20e_blades-256.py'
BLADES_DEMO_2D = 'mv2d-2d-stage_r18_fpn_1xb1-12e_blades-256.py'
BENCH = 'mv2d_r18_fpn_1xb1-6e_chest-bench-320.py'
BENCH_2D = 'mv2d-2d-stage_r18_fpn_1xb1-12e_chest-bench-320.py'
BLADES_BENCH = 'mv2d_r18_fpn_1xb1-7e_blades-bench-256.py'
BLADES_BENCH_2D = 'mv2d-2d-stage_r18_fpn_1xb1-12e_blades-bench-256.py'


def load(name: str) -> Config:
    return Config.fromfile(osp.join(CONFIG_DIR, name))


def build_model(cfg: Config):
    from mmdet3d.registry import MODELS

    import projects.mv2d_xray.mv2d_xray  # noqa: F401
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    return model


def test_the_configs_are_there():
    assert {PAPER, STAGE_2D, DEMO, DEMO_2D, BENCH, BENCH_2D, BLADES, BLADES_2D, BLADES_DEMO,
            BLADES_DEMO_2D, BLADES_BENCH, BLADES_BENCH_2D} <= set(CONFIGS)


def test_custom_imports_register_the_plugin_in_a_fresh_process(demo_dataset):
    """Loading a config is all it takes: its ``custom_imports`` registers the plugin, then
    the model and the dataset build from the registries (issue 2, item 5)."""
    code = '\n'.join([
        'import sys',
        'from mmdet3d.registry import DATASETS, MODELS',
        "assert 'MV2DXray' not in MODELS.module_dict",
        "assert 'projects.mv2d_xray.mv2d_xray' not in sys.modules",
        'from mmengine.config import Config',
        'from mmengine.registry import init_default_scope',
        'cfg = Config.fromfile(sys.argv[1])',
        'init_default_scope(cfg.default_scope)',
        'model = MODELS.build(cfg.model)',
        'cfg.val_dataloader.dataset.update(data_root=sys.argv[2], image_size=None)',
        'dataset = DATASETS.build(cfg.val_dataloader.dataset)',
        'print(type(model).__name__, type(dataset).__name__, len(dataset))',
    ])
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run(
        [sys.executable, '-c', code, osp.join(CONFIG_DIR, DEMO), demo_dataset.root],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ['MV2DXray', 'MV2DXrayDataset',
                                       str(len(demo_dataset.tokens['val']))]


def _find(pipeline, type_name):
    return [t for t in pipeline if t['type'] == type_name]


@pytest.mark.parametrize('name', CONFIGS)
def test_config_settings_agree(name):
    """What the acquisition fixes must agree everywhere it appears: image size in the
    pipelines, views, source distance, image size and classes in the datasets (which
    check them against the data), ranges and class counts in the model,
    one stage weight per decoder layer, each evaluator on its dataloader's pickle."""
    cfg = load(name)
    model = cfg.model
    assert model.base_detector.roi_head.bbox_head.num_classes == len(cfg.class_names)
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.num_views == cfg.num_views
        assert dataset.sod_mm == cfg.sod_mm                 # checked against the data
        assert tuple(dataset.image_size) == tuple(cfg.img_size)
        assert list(dataset.metainfo.classes) == list(cfg.class_names)
        for resize in _find(dataset.pipeline, 'XrayResizeCropFlip'):
            assert tuple(resize.img_scale) == tuple(cfg.img_size)
    # each evaluator reads its split's pickle (test = val, or a held-out test split)
    for split in ('val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert cfg[f'{split}_evaluator'].ann_file == dataset.data_root + dataset.ann_file
    assert {k: v for k, v in cfg.test_evaluator.items() if k != 'ann_file'} == \
        {k: v for k, v in cfg.val_evaluator.items() if k != 'ann_file'}
    if model.roi_head is None:
        return
    head = model.roi_head
    depth = (cfg.sod_mm - cfg.body_radius_mm, cfg.sod_mm + cfg.body_radius_mm)
    assert tuple(head.positional_encoding.depth_range) == depth
    assert tuple(head.box_correlation.depth_range) == depth
    coder = head.bbox_head.bbox_coder
    assert coder.pc_range == head.positional_encoding.position_range == \
        cfg.point_cloud_range
    assert head.bbox_head.num_classes == coder.num_classes == len(cfg.class_names)
    num_layers = head.bbox_head.transformer.num_layers
    assert len(model.train_cfg.rcnn.stage_loss_weights) == num_layers
    # the 3D RoI extractor reads the detector's FPN levels
    strides = model.base_detector.rpn_head.anchor_generator.strides
    assert set(head.bbox_roi_extractor.featmap_strides) <= set(strides)
    assert head.bbox_roi_extractor.out_channels == model.base_detector.neck.out_channels


def test_paper_config_is_the_paper_setting():
    cfg = load(PAPER)
    assert cfg.num_views == 10 and tuple(cfg.img_size) == (1024, 1024)
    assert cfg.model.base_detector.backbone.depth == 50
    assert cfg.model.base_detector.backbone.dcn is None
    assert cfg.train_dataloader.batch_size == 1
    assert cfg.train_dataloader.dataset.data_root == 'data/lidc/'
    optim = cfg.optim_wrapper
    assert (optim.optimizer.type, optim.optimizer.lr, optim.optimizer.weight_decay) == \
        ('AdamW', 2e-4, 0.01)
    assert optim.paramwise_cfg.custom_keys['base_detector.backbone'].lr_mult == 0.25
    assert optim.clip_grad.max_norm == 35
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR', 500, False)
    assert np.isclose(warmup.start_factor, 1 / 3)
    assert (cosine.type, cosine.eta_min_ratio, cosine.end) == ('CosineAnnealingLR', 1e-3, 24)
    assert cfg.train_cfg.max_epochs == 24
    # L = L_2D + 0.1 L_3D with L_3D = 0.25 L_cls + L_reg, per decoder layer
    head = cfg.model.roi_head.bbox_head
    assert set(cfg.model.train_cfg.rcnn.stage_loss_weights) == {0.1}
    assert (head.loss_cls.loss_weight, head.loss_bbox.loss_weight) == (0.25, 1.0)


def loading_problems(cfg) -> list:
    """What a config's train / val / test dataloaders miss: ``persistent_workers=True``
    when they have worker processes (``num_workers > 0``), and ``pin_memory=True``."""
    problems = []
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        if loader.get('num_workers', 0) > 0 and not loader.get('persistent_workers', False):
            problems.append(f'{split}: {loader.num_workers} workers, not persistent')
        if not loader.get('pin_memory', False):
            problems.append(f'{split}: no pin_memory')
    return problems


@pytest.mark.parametrize('name', CONFIGS)
def test_dataloaders_keep_their_workers_and_pin_memory(name):
    """Worker processes persist across epochs and validations (not started again each
    time), and batches are pinned for the copy to a GPU (the tools turn pinning off
    without CUDA: ``test_pin_memory_only_with_cuda``)."""
    assert loading_problems(load(name)) == []
    assert loading_problems(Config(dict(
        train_dataloader=dict(num_workers=2), val_dataloader=dict(num_workers=0),
        test_dataloader=dict(num_workers=2, persistent_workers=True, pin_memory=True)))) == \
        ['train: 2 workers, not persistent', 'train: no pin_memory', 'val: no pin_memory']


def test_pin_memory_only_with_cuda(monkeypatch):
    """``tools/train.py`` / ``tools/test.py`` keep the configs' ``pin_memory`` with CUDA and
    turn it off without, where torch would only warn about it for every loader."""
    import importlib
    import warnings

    from torch.utils.data import DataLoader
    monkeypatch.syspath_prepend(osp.join(REPO_ROOT, 'tools'))
    common = importlib.import_module('_common')
    cfg = load(PAPER)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    common.pin_memory_only_with_cuda(cfg)
    assert [cfg[f'{s}_dataloader'].pin_memory for s in ('train', 'val', 'test')] == [True] * 3
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    common.pin_memory_only_with_cuda(cfg)
    assert [cfg[f'{s}_dataloader'].pin_memory for s in ('train', 'val', 'test')] == [False] * 3
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert list(DataLoader([1, 2], pin_memory=cfg.train_dataloader.pin_memory)) == \
            [torch.tensor([1]), torch.tensor([2])]
    if not torch.accelerator.is_available():
        with pytest.warns(UserWarning, match="'pin_memory' argument is set as true but no "
                                             'accelerator is found'):
            list(DataLoader([1, 2], pin_memory=True))


@pytest.mark.parametrize('name_2d, name', [(STAGE_2D, PAPER), (DEMO_2D, DEMO),
                                           (BENCH_2D, BENCH), (BLADES_2D, BLADES),
                                           (BLADES_DEMO_2D, BLADES_DEMO),
                                           (BLADES_BENCH_2D, BLADES_BENCH)])
def test_2d_stage_checkpoint_initialises_the_full_model(tmp_path, name_2d, name):
    """The 2D-stage config's parameters are exactly the full model's 2D stage: a checkpoint
    of it loads through ``load_from`` (mmengine, non-strict) into every ``base_detector``
    weight and leaves the 3D head as it was."""
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import save_checkpoint
    stage_2d = build_model(load(name_2d))
    full = build_model(load(name))
    state_2d, state_full = stage_2d.state_dict(), full.state_dict()
    assert set(state_2d) == {k for k in state_full if k.startswith('base_detector.')} | \
        {k for k in state_2d if k.startswith('data_preprocessor.')}
    assert all(state_2d[k].shape == state_full[k].shape for k in state_2d)
    assert all(k.startswith(('base_detector.', 'roi_head.', 'data_preprocessor.'))
               for k in state_full)

    with torch.no_grad():  # make the 2D weights recognisable
        for param in stage_2d.parameters():
            param.add_(1.0)
    head_before = {k: v.clone() for k, v in full.state_dict().items()
                   if k.startswith('roi_head.')}
    path = str(tmp_path / 'stage_2d.pth')
    save_checkpoint({'state_dict': stage_2d.state_dict(), 'meta': {}}, path)
    load_checkpoint(full, path, map_location='cpu', strict=False)
    loaded = full.state_dict()
    for key, value in stage_2d.state_dict().items():
        assert torch.equal(loaded[key], value), key
    for key, value in head_before.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize('name_2d, name', [(STAGE_2D, PAPER), (DEMO_2D, DEMO),
                                           (BENCH_2D, BENCH), (BLADES_2D, BLADES),
                                           (BLADES_DEMO_2D, BLADES_DEMO),
                                           (BLADES_BENCH_2D, BLADES_BENCH)])
def test_2d_stage_evaluates_2d_only(name_2d, name):
    """A 2D-stage config (no 3D head) evaluates its val and test passes in 2D alone
    (``evaluate_3d=False``: no 3D figures of 0 in its log); the full model's evaluates
    in 3D, on the same files."""
    stage_2d, full = load(name_2d), load(name)
    for key in ('val_evaluator', 'test_evaluator'):
        assert stage_2d[key]['evaluate_3d'] is False, (name_2d, key)
        assert full[key].get('evaluate_3d', True) is True, (name, key)
        assert stage_2d[key]['ann_file'] == full[key]['ann_file']


def test_2d_stage_model_trains_and_predicts_2d_only():
    """With ``roi_head=None`` the model has the 2D losses only and predicts per-view 2D
    detections with empty 3D results (what the metric's 2D evaluation reads)."""
    from mv2d_test_utils import make_batch, tiny_mv2d_config
    cfg = tiny_mv2d_config()
    cfg['roi_head'] = None
    model = build_model(Config(dict(model=cfg)))
    model.train()
    data = model.data_preprocessor(make_batch(4, [2, 0], seed=3), True)
    losses = model(**data, mode='loss')
    assert losses and all(key.startswith('det_') for key in losses)
    total, _ = model.parse_losses(losses)
    total.backward()
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(make_batch(4, [2, 0], seed=3), False),
                        mode='predict')
    for result in results:
        assert len(result.pred_instances_3d.scores_3d) == 0
        assert result.pred_instances_3d.bboxes_3d.tensor.shape == (0, 7)
        assert set(result.pred_instances.keys()) >= {'bboxes', 'scores', 'labels',
                                                       'view_ids'}


@pytest.mark.parametrize('name', [BLADES, BLADES_DEMO, BLADES_BENCH])
def test_blades_configs_match_the_blades_source(name):
    """The blades configs use the source's classes, turntable and data folder names."""
    from data_converters.sources.blades import BladesSource
    cfg = load(name)
    assert list(cfg.class_names) == list(BladesSource.classes)
    assert cfg.num_views == BladesSource.default_ring['views']
    assert cfg.sod_mm == BladesSource.default_ring['sod']
    assert cfg.train_dataloader.dataset.ann_file == 'blades_infos_train.pkl'
    assert cfg.model.roi_head.bbox_head.num_classes == 3


def saved_activation_bytes(backbone, x):
    """Bytes autograd keeps for the backward pass of ``backbone(x)``, its outputs and
    the parameters' gradients after a backward of the mean of every output."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outs = backbone(x)
    sum(out.mean() for out in outs).backward()
    return total[0], outs, [p.grad for p in backbone.parameters()]


def test_backbone_memory_switches_do_what_the_config_says():
    """The config keys ``with_cp`` and ``frozen_stages`` of the backbone (the paper's
    config, inherited by the demo's) reach mmdet's ResNet: with_cp keeps less than a
    fifth of the activations for the backward pass, with the same outputs and
    gradients; frozen_stages=1 fixes the stem and the first stage (no gradients, BN in
    eval mode) and leaves the second one training. ``sync_bn`` is off by default."""
    from mmdet3d.registry import MODELS

    import projects.mv2d_xray.mv2d_xray  # noqa: F401
    init_default_scope('mmdet3d')
    for name in (PAPER, DEMO):
        cfg = load(name)
        backbone = cfg.model.base_detector.backbone
        assert (backbone.with_cp, backbone.frozen_stages, cfg.sync_bn) == (False, -1, None)
    x = torch.rand(2, 3, 64, 64)
    runs = {}
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = MODELS.build(dict(backbone, with_cp=with_cp))
        model.train()   # mmdet's ResNet.train returns None
        runs[with_cp] = saved_activation_bytes(model, x)
    assert runs[True][0] < 0.2 * runs[False][0], (runs[True][0], runs[False][0])
    for plain, checkpointed in zip(runs[False][1], runs[True][1]):
        torch.testing.assert_close(checkpointed, plain)
    for plain, checkpointed in zip(runs[False][2], runs[True][2]):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)

    model = MODELS.build(dict(backbone, frozen_stages=1))
    model.train()
    frozen = {n.split('.')[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {'conv1', 'bn1', 'layer1'}
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training


@pytest.mark.parametrize('config, config_2d, hooks', [
    (BENCH, BENCH_2D, [dict(type='EMAHook', momentum=0.002)]),
    # the blades' 2D stage trains on with MV2D: only the 3D head is averaged
    (BLADES_BENCH, BLADES_BENCH_2D,
     [dict(type='EMAHook', ema_type='XrayPartialEMA', momentum=0.002)]),
])
def test_benchmark_mv2d_averages_its_weights_and_its_2d_stage_does_not(
        tmp_path, config, config_2d, hooks):
    """The benchmarks' MV2D configs train with mmengine's EMAHook; their 2D-stage configs,
    which inherit from them, clear the hook, so the 2D stage trains (and is recorded by
    the benchmark, ``training_digest``) as a config with no hook at all."""
    from conftest import import_from
    training_digest = import_from('tools', 'benchmark_detection').training_digest
    mv2d, stage_2d = load(config), load(config_2d)
    assert mv2d.custom_hooks == hooks
    assert stage_2d.custom_hooks == []

    def digest(custom_hooks):
        settings = load(config_2d).to_dict()
        settings.pop('custom_hooks')
        if custom_hooks is not None:
            settings['custom_hooks'] = custom_hooks
        path = str(tmp_path / f'stage_2d_{len(list(tmp_path.iterdir()))}.py')
        Config(settings).dump(path)
        return training_digest(path)
    as_dumped = digest([])
    assert digest(None) == as_dumped
    assert digest(mv2d.custom_hooks) != as_dumped
