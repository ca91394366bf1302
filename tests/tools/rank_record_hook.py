"""A test hook for the multi-process training tests (``tests/tools/test_amp_distributed.py``
loads it through the config's ``custom_imports``): every process writes what it computed
to ``<work dir>/rank<r>.json``, so a test can compare the processes with each other and
with a single-process run."""
import hashlib
import json
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankRecordHook(Hook):
    """Record, per process, the total loss of every iteration (``losses``), the world
    size and, after training, a SHA-256 of the model's weights (``weights_sha256``: every
    floating state tensor in name order, as float32 bytes)."""

    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append(float(outputs['loss']))

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        digest = hashlib.sha256()
        for name, value in sorted(model.state_dict().items()):
            if torch.is_floating_point(value):
                digest.update(name.encode())
                digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        with open(osp.join(runner.work_dir, f'rank{runner.rank}.json'), 'w') as f:
            json.dump(dict(rank=runner.rank, world_size=runner.world_size,
                           losses=self.losses, weights_sha256=digest.hexdigest()), f)
