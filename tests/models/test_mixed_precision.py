"""Mixed precision on the CPU (bf16 autocast through ``XrayAmpOptimWrapper``): the 2D
stage's convolutions run in bf16, its NMS and RoI-align and the whole 3D head in fp32,
losses and gradients are finite, and the wrapper behaves as mmengine's without a GPU."""
import copy

import pytest
import torch
from mmengine.registry import init_default_scope
from mv2d_test_utils import make_batch, tiny_mv2d_config

from projects.mv2d_xray.mv2d_xray.engine import XrayAmpOptimWrapper

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason='the CPU path (on a GPU it is mmengine\'s wrapper)')


def build(num_layers: int = 2):
    from mmdet3d.registry import MODELS

    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    model = MODELS.build(tiny_mv2d_config(num_layers))
    model.init_weights()
    return model


def amp_wrapper(model, **kwargs):
    from mmengine.optim import build_optim_wrapper
    cfg = dict(type='XrayAmpOptimWrapper', optimizer=dict(type='AdamW', lr=1e-3),
               clip_grad=dict(max_norm=35, norm_type=2), **kwargs)
    wrapper = build_optim_wrapper(model, cfg)
    assert isinstance(wrapper, XrayAmpOptimWrapper)
    return wrapper


def record_dtypes(model):
    """Forward hooks: the dtype of the FPN's first level and of the 3D decoder's
    outputs (class logits and box codes of every layer)."""
    seen = {}

    def neck(module, inputs, output):
        seen['fpn'] = output[0].dtype

    def head(module, inputs, output):
        seen['cls'], seen['codes'] = (t.dtype for t in output)

    model.base_detector.neck.register_forward_hook(neck)
    model.roi_head.bbox_head.register_forward_hook(head)
    return seen


def test_bf16_train_step_keeps_the_3d_head_in_fp32():
    """One ``train_step`` under the wrapper: the FPN runs in bf16 (autocast is on), the
    2D stage's NMS and RoI-align accept it (mmcv's CPU kernels are fp32 only), the 3D
    head's outputs and every loss are fp32 and finite, and the step changes the
    weights by finite amounts."""
    model = build()
    seen = record_dtypes(model)
    wrapper = amp_wrapper(model)
    assert wrapper.cast_dtype == torch.bfloat16
    batch = make_batch(4, [2, 1], seed=1)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    log_vars = model.train_step(copy.deepcopy(batch), wrapper)
    assert seen == dict(fpn=torch.bfloat16, cls=torch.float32, codes=torch.float32)
    assert {'loss', 'det_loss_rpn_cls', 'det_loss_cls', 'l0.loss_cls',
            'l1.loss_bbox'} <= set(log_vars)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values()), log_vars
    moved = [float((p - before[k]).abs().max()) for k, p in model.named_parameters()]
    assert torch.isfinite(torch.tensor(moved)).all() and max(moved) > 0

    # the same losses in plain fp32 and under bf16 agree to bf16 accuracy (the 3D terms
    # depend on the 2D detections, so only the first 2D loss is compared)
    model.train()
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    torch.manual_seed(3)
    fp32 = model(**copy.deepcopy(data), mode='loss')
    torch.manual_seed(3)
    with wrapper.optim_context(model):
        bf16 = model(**copy.deepcopy(data), mode='loss')
    ref = sum(fp32['det_loss_rpn_cls'])
    assert float(abs(sum(bf16['det_loss_rpn_cls']) - ref)) < 0.05 * float(ref)


def test_bf16_predict_gives_fp32_boxes():
    model = build()
    seen = record_dtypes(model)
    model.eval()
    wrapper = amp_wrapper(model)
    with torch.no_grad(), wrapper.optim_context(model):
        out = model.test_step(make_batch(4, [2], seed=2))
    assert seen['fpn'] == torch.bfloat16 and seen['cls'] == torch.float32
    pred = out[0].pred_instances_3d
    assert pred.bboxes_3d.tensor.dtype == torch.float32 and len(pred.scores_3d) > 0
    assert torch.isfinite(pred.bboxes_3d.tensor).all()
    assert out[0].pred_instances.bboxes.dtype == torch.float32


def test_cpu_wrapper_refuses_fp16_and_round_trips_its_state():
    model = build(1)
    with pytest.raises(ValueError, match='bfloat16 only'):
        amp_wrapper(model, dtype='float16')
    wrapper = amp_wrapper(model, dtype='bfloat16')
    loss = sum(p.float().sum() for p in model.roi_head.parameters())
    wrapper.update_params(loss)        # backward (no loss scaling) + step
    state = wrapper.state_dict()
    assert state['loss_scaler'] == {} and len(state['state']) > 0
    other = amp_wrapper(model)
    other.load_state_dict(copy.deepcopy(state))
    assert other.optimizer.state_dict()['state'].keys() == state['state'].keys()
