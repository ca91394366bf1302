"""The registered mmengine metric ``XrayDet3DMetric``: data samples in, flat figures and the
metrics / predictions / 2D-detections files out, the same JSON as ``tools/evaluate.py``."""
import json
import os.path as osp

import mmengine
import numpy as np
import pytest
import torch
from eval_fake_data import run_tool, write_eval_dataset
from mmdet3d.registry import METRICS
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

from projects.mv2d_xray.core.geometry import image_aug_matrix
from projects.mv2d_xray.mv2d_xray.evaluation import XrayDet3DMetric  # noqa: F401
from projects.mv2d_xray.mv2d_xray.models.config_keys import XrayConfigError

SCALE = 0.5   # the model's input views are half the original size


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_eval_dataset(str(tmp_path_factory.mktemp('metric_data')))


def make_samples(infos_path, with_token=True, shift=(0.0, 0.0, 0.0), with_2d=True):
    """Data samples as the model returns them: 3D boxes = the findings (ignore regions
    too), 2D detections = the ground-truth boxes in the resized input views."""
    infos = mmengine.load(infos_path)
    aug = image_aug_matrix(scale=(SCALE, SCALE))
    samples = []
    for info in infos['data_list']:
        views = list(info['images'])
        meta = dict(sample_idx=info['sample_idx'], view_names=views,
                    img_aug_matrix=np.stack([aug] * len(views)))
        if with_token:
            meta['token'] = info['token']
        sample = Det3DDataSample(metainfo=meta)
        boxes = np.asarray([i['bbox_3d'] for i in info['instances']], np.float32).reshape(-1, 7)
        boxes[:, :3] += np.asarray(shift, np.float32)
        sample.pred_instances_3d = InstanceData(
            bboxes_3d=LiDARInstance3DBoxes(torch.from_numpy(boxes), origin=(0.5, 0.5, 0.5)),
            scores_3d=torch.linspace(0.9, 0.5, len(boxes)),
            labels_3d=torch.zeros(len(boxes), dtype=torch.long))
        if with_2d:
            b2d = [(v, c['bbox']) for v, name in enumerate(views)
                   for c in info['cam_instances'][name]]
            sample.pred_instances = InstanceData(
                bboxes=torch.tensor([b for _, b in b2d], dtype=torch.float32).reshape(-1, 4)
                * SCALE,
                scores=torch.full((len(b2d),), 0.8),
                labels=torch.zeros(len(b2d), dtype=torch.long),
                view_ids=torch.tensor([v for v, _ in b2d], dtype=torch.long))
        samples.append(sample)
    return samples


def run_metric(metric, samples):
    evaluator = Evaluator(metric)
    evaluator.dataset_meta = dict(classes=('nodule',))
    evaluator.process(data_samples=samples, data_batch={})
    return evaluator.evaluate(len(samples))


def test_metric_end_to_end(dataset, tmp_path):
    out_file = str(tmp_path / 'run' / 'metrics.json')
    metric = METRICS.build(dict(type='XrayDet3DMetric', ann_file=dataset['infos'],
                                out_file=out_file))
    flat = run_metric(metric, make_samples(dataset['infos']))
    # perfect 3D boxes (those on ignore regions count neither way), perfect 2D boxes
    for key in ('CPM', 'mAP_dist', 'AP_iou@0.1', 'AP_iou@0.5', 'FROC@0.125',
                'CPM_3-6mm', 'CPM_>10mm'):
        assert flat[key] == pytest.approx(1.0), key
    assert flat['centre_error_mm'] == pytest.approx(0.0, abs=1e-5)
    assert flat['2d/AP@0.5'] == pytest.approx(1.0) and flat['2d/AR@0.1'] == 1.0
    assert all(isinstance(v, float) for v in flat.values())

    with open(out_file) as f:
        result = json.load(f)
    for key in ('CPM', 'FROC', 'mAP_dist', 'AP_dist@2mm', 'AP_dist@4mm', 'AP_dist@8mm',
                'AP_dist@16mm', 'AP_iou@0.1', 'AP_iou@0.25', 'AP_iou@0.5',
                'centre_error_mm', 'by_size'):
        assert key in result, key
    assert result['num_scans'] == 3 and result['num_negative_scans'] == 1
    assert result['eval_2d']['by_view']['VIEW_00']['AP@0.5'] == pytest.approx(1.0)

    # the 2D detections went back to the original pixels: they equal the COCO boxes
    with open(osp.join(osp.dirname(out_file), 'dets2d.json')) as f:
        dets = json.load(f)
    with open(dataset['coco']) as f:
        coco = json.load(f)
    gt_boxes = sorted((a['image_id'], *np.round(a['bbox'], 3)) for a in coco['annotations'])
    det_boxes = sorted((d['image_id'], *np.round(d['bbox'], 3)) for d in dets)
    assert det_boxes == gt_boxes

    # tools/evaluate.py on the predictions the metric wrote gives the same figures
    pred_file = osp.join(osp.dirname(out_file), 'predictions.json')
    cli_out = str(tmp_path / 'cli.json')
    assert run_tool('evaluate', '--gt', dataset['infos'], '--pred', pred_file,
                    '--out', cli_out) == 0
    with open(cli_out) as f:
        cli = json.load(f)
    for key in ('eval_2d', 'num_invalid_pred'):
        result.pop(key)
    assert _same(cli, result)


def _same(a, b, tol=1e-5):
    """Recursive equality with a float tolerance (the metric got float32 boxes)."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        return all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=tol)
        return True
    assert a == b
    return True


def test_metric_shift_sample_idx_and_invalid_boxes(dataset, tmp_path):
    # no token: the case is found by sample_idx; a 3 mm shift crosses 2 mm, not 4 mm
    metric = XrayDet3DMetric(ann_file=dataset['infos'], out_file=None)
    samples = make_samples(dataset['infos'], with_token=False, shift=(3.0, 0.0, 0.0),
                           with_2d=False)
    bad = samples[0].pred_instances_3d
    tensor = bad.bboxes_3d.tensor.clone()
    tensor[0, 0] = float('nan')
    bad.bboxes_3d = LiDARInstance3DBoxes(tensor)      # the tensor is bottom-centred
    flat = run_metric(metric, samples)
    # 3 of 4 findings found (one box was NaN and dropped), no false positive at 4 mm:
    # precision 1 up to recall 0.75 -> 76 of the 101 recall points
    assert flat['AP_dist@2mm'] == 0.0 and flat['AP_dist@4mm'] == pytest.approx(76 / 101)
    assert flat['centre_error_mm'] == pytest.approx(3.0, abs=1e-5)
    assert not any(k.startswith('2d/') for k in flat)
    assert metric.pred_out_file is None        # no out_file: nothing written


def test_metric_unknown_case(dataset):
    metric = XrayDet3DMetric(ann_file=dataset['infos'])
    sample = make_samples(dataset['infos'], with_2d=False)[0]
    sample.set_metainfo(dict(token='not-a-case'))
    with pytest.raises(KeyError, match='not-a-case'):
        run_metric(metric, [sample])


def test_metric_without_3d_stage_writes_the_2d_figures_only(dataset, tmp_path):
    """``evaluate_3d=False`` (a model run without its 3D stage): the 2D detections and
    their figures, no 3D figures of 0 and no empty predictions file."""
    out_file = str(tmp_path / 'metrics.json')
    metric = XrayDet3DMetric(ann_file=dataset['infos'], out_file=out_file,
                             evaluate_3d=False)
    samples = make_samples(dataset['infos'])
    for sample in samples:       # what MV2D without roi_head returns: no 3D boxes
        sample.pred_instances_3d = sample.pred_instances_3d[:0]
    flat = run_metric(metric, samples)
    assert flat['2d/AP@0.5'] == pytest.approx(1.0)
    assert not any(key.startswith(('CPM', 'FROC', 'mAP')) for key in flat)
    with open(out_file) as f:
        assert set(json.load(f)) == {'eval_2d'}
    assert osp.isfile(tmp_path / 'dets2d.json')
    assert not osp.exists(tmp_path / 'predictions.json')
    # the default scores the same run's empty 3D output as a model that finds nothing
    flat_3d = run_metric(XrayDet3DMetric(ann_file=dataset['infos']), samples)
    assert flat_3d['CPM'] == 0.0 and flat_3d['2d/AP@0.5'] == pytest.approx(1.0)


def test_metric_without_3d_stage_needs_2d_detections_and_a_bool(dataset):
    metric = XrayDet3DMetric(ann_file=dataset['infos'], evaluate_3d=False)
    with pytest.raises(XrayConfigError, match="evaluate_3d=False.*case '.*' has no 2D"):
        run_metric(metric, make_samples(dataset['infos'], with_2d=False))
    with pytest.raises(XrayConfigError, match="evaluate_3d is True or False, not 'no'"):
        XrayDet3DMetric(ann_file=dataset['infos'], evaluate_3d='no')


def test_metric_without_a_coco_file_writes_the_2d_detections_unevaluated(dataset, tmp_path):
    """``coco_ann_file=None``: no 2D evaluation (not an error); with ``evaluate_3d=False``
    the 2D detections are still written, and the metrics file holds no figures."""
    flat = run_metric(XrayDet3DMetric(ann_file=dataset['infos'], coco_ann_file=None),
                      make_samples(dataset['infos']))
    assert flat['CPM'] == pytest.approx(1.0) and not any(k.startswith('2d/') for k in flat)
    out_file = str(tmp_path / 'metrics.json')
    metric = XrayDet3DMetric(ann_file=dataset['infos'], out_file=out_file,
                             coco_ann_file=None, evaluate_3d=False)
    assert run_metric(metric, make_samples(dataset['infos'])) == {}
    with open(out_file) as f:
        assert json.load(f) == {}
    with open(tmp_path / 'dets2d.json') as f:
        assert len(json.load(f)) == sum(len(info['cam_instances'][view])
                                        for info in mmengine.load(dataset['infos'])['data_list']
                                        for view in info['images'])
