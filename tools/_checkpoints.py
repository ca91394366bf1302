"""How the tools load checkpoints: :mod:`projects.mv2d_xray.core.checkpoint` (safe loading
with an allow-list, ``--trust-checkpoint``, refusing checkpoints that do not fit), shared
with the plugin's inferencer and re-exported here for the tools."""
from _common import REPO_ROOT  # importing _common puts the repository root on sys.path

from projects.mv2d_xray.core.checkpoint import (CHECKPOINT_HELP, MAX_UNFIT_FRACTION, TRUST_HELP,
                                                CheckpointError, checkpoint_loading,
                                                checkpoint_safe_globals, history_buffer_getattr,
                                                load_weights, require_fit, require_resumable,
                                                starting_weights_note, torch_load, weights_fit)

__all__ = ['CHECKPOINT_HELP', 'MAX_UNFIT_FRACTION', 'TRUST_HELP', 'CheckpointError',
           'checkpoint_loading', 'checkpoint_safe_globals', 'history_buffer_getattr',
           'load_weights', 'require_fit', 'require_resumable', 'starting_weights_note',
           'torch_load', 'weights_fit', 'REPO_ROOT']
