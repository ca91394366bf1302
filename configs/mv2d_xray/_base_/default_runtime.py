# Runtime shared by the mv2d_xray configs (mmdet3d 1.4's default_runtime, without its
# visualisation hook: pictures come from tools/visualize.py).
default_scope = 'mmdet3d'
custom_imports = dict(imports=['projects.mv2d_xray.mv2d_xray'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))   # without CUDA, tools/train.py uses gloo

# Multi-process runs (tools/dist_train.sh): 'torch' makes mmengine's Runner convert the BN
# layers to SyncBatchNorm (batch statistics over all processes; CUDA only -- the tools
# refuse it without CUDA); None keeps per-process BN. One process ignores it.
sync_bn = None

vis_backends = [dict(type='LocalVisBackend')]  # scalars.json in the run's folder
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
