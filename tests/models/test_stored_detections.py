"""StoredDetections: cross-fitted 2D detections read from dets2d.json files, mapped into the
network input of each view, and MV2D's training queries taken from them."""
import json

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope
from mv2d_test_utils import make_batch, tiny_mv2d_config

import projects.mv2d_xray.mv2d_xray  # noqa: F401  (registers the modules)
from projects.mv2d_xray.mv2d_xray.models.stored_detections import (MissingDetectionsError,
                                                                   StoredDetections)

init_default_scope('mmdet3d')


def _det(token, view, box, score, category_id=1):
    x1, y1, x2, y2 = box
    return dict(image_id=None, token=token, view=view, bbox=[x1, y1, x2 - x1, y2 - y1],
                score=score, category_id=category_id)


def _write(path, records):
    path.write_text(json.dumps(records))
    return str(path)


def test_boxes_follow_each_views_augmentation(tmp_path):
    """A box of the original image lands where the view's img_aug_matrix puts it (a 2x
    resize, a horizontal flip of a 100 px wide view), by descending score; a view
    without entries has none; the labels are the 0-based category ids."""
    path = _write(tmp_path / 'dets2d.json', [
        _det('case-a', 'v0', (10, 20, 14, 26), 0.2),
        _det('case-a', 'v0', (30, 40, 33, 45), 0.9, category_id=2),
        _det('case-a', 'v1', (10, 20, 14, 26), 0.5)])
    resize = np.diag([2.0, 2.0, 1.0, 1.0])
    flip = np.eye(4)        # the img -> img affine's translation is column 2 (u, v, 1)
    flip[0, 0], flip[0, 2] = -1.0, 100.0
    meta = dict(token='case-a', view_names=['v1', 'v0', 'v2'],
                img_aug_matrix=np.stack([resize, flip, np.eye(4)]))
    v1, v0, v2 = StoredDetections(path).for_case(meta)
    torch.testing.assert_close(v1.bboxes, torch.tensor([[20., 40., 28., 52.]]))
    torch.testing.assert_close(v0.bboxes, torch.tensor([[67., 40., 70., 45.],
                                                        [86., 20., 90., 26.]]))
    torch.testing.assert_close(v0.scores, torch.tensor([0.9, 0.2]))
    assert v0.labels.tolist() == [1, 0] and v1.labels.tolist() == [0]
    assert v2.bboxes.shape == (0, 4) and len(v2.scores) == 0
    # without an augmentation matrix the boxes are the file's
    v1, _, _ = StoredDetections([path]).for_case(dict(token='case-a',
                                                      view_names=['v1', 'v0', 'v2']))
    torch.testing.assert_close(v1.bboxes, torch.tensor([[10., 20., 14., 26.]]))


def test_bad_files_and_missing_cases_are_one_line(tmp_path):
    """A case of no file, a case in two files (two folds), an entry that is not a
    detection, and a file that is not a list each stop with a message naming them."""
    fold1 = _write(tmp_path / 'fold1.json', [_det('case-a', 'v0', (0, 0, 4, 4), 0.5)])
    fold2 = _write(tmp_path / 'fold2.json', [_det('case-b', 'v0', (0, 0, 4, 4), 0.5)])
    stored = StoredDetections([fold1, fold2])
    assert len(stored) == 2 and 'case-b' in stored and 'case-c' not in stored
    with pytest.raises(MissingDetectionsError, match=r"case 'case-c' has no entry .*fold1"):
        stored.for_case(dict(token='case-c', view_names=['v0']))
    with pytest.raises(ValueError, match="case 'case-a' is also in an earlier"):
        StoredDetections([fold1, fold1])
    bad = _write(tmp_path / 'bad.json', [dict(token='case-a', view='v0', score=0.5)])
    with pytest.raises(ValueError, match='bad.json: entry 0 is not a 2D detection'):
        StoredDetections(bad)
    nan = _write(tmp_path / 'nan.json', [_det('case-a', 'v0', (0, 0, 4, 4), float('nan'))])
    with pytest.raises(ValueError, match='nan.json: entry 0: score must be a finite number'):
        StoredDetections(nan)
    with pytest.raises(ValueError, match='expected a list'):
        StoredDetections(_write(tmp_path / 'dict.json', {'token': 'case-a'}))
    with pytest.raises(FileNotFoundError, match='2D detection file not found'):
        StoredDetections(str(tmp_path / 'none.json'))


def test_mv2d_trains_on_the_stored_detections(tmp_path, monkeypatch):
    """With ``train_cfg.detections_file`` the 3D stage's training RoIs are the file's
    boxes (scene-major, per view), not the 2D stage's own detections, which are not
    computed; the config key is checked; a test-time model never reads the file."""
    torch.manual_seed(0)
    num_views = 3
    batch = make_batch(num_views, [1, 2], seed=4)
    names = [f'view{v}' for v in range(num_views)]
    for sample in batch['data_samples']:
        sample.set_metainfo(dict(view_names=names))
    tokens = [s.metainfo['token'] for s in batch['data_samples']]
    path = _write(tmp_path / 'dets2d.json', [
        _det(tokens[0], 'view0', (10, 12, 20, 22), 0.8),
        _det(tokens[0], 'view2', (30, 30, 36, 40), 0.6),
        _det(tokens[1], 'view1', (5, 6, 9, 10), 0.7),
        _det(tokens[1], 'view1', (40, 41, 50, 52), 0.3)])
    cfg = tiny_mv2d_config()
    cfg.update(freeze_base_detector=True)
    cfg['train_cfg'].update(detections_file=path, complement_2d_gt=-1)    # the file only
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    seen = {}

    def loss(feats, rois, metas, gts, num_views, roi_scores):
        seen.update(rois=rois, scores=roi_scores)
        return dict(loss=rois.new_zeros(()))
    monkeypatch.setattr(model.roi_head, 'loss', loss)
    monkeypatch.setattr(model, 'detect_2d', lambda *a, **k: pytest.fail('2D stage ran'))
    data = model.data_preprocessor(batch, True)
    model(**data, mode='loss')
    # images (scene-major): scene 0 views 0..2, scene 1 views 0..2
    expected = torch.tensor([[0, 10, 12, 20, 22], [2, 30, 30, 36, 40],
                             [4, 5, 6, 9, 10], [4, 40, 41, 50, 52]], dtype=torch.float32)
    torch.testing.assert_close(seen['rois'], expected)
    torch.testing.assert_close(seen['scores'], torch.tensor([0.8, 0.6, 0.7, 0.3]))
    # a misspelled key stops the build
    cfg['train_cfg']['detection_file'] = path
    with pytest.raises(ValueError, match="did you mean 'detections_file'"):
        MODELS.build(cfg)
    # a model built to test never opens the file
    cfg = tiny_mv2d_config()
    cfg['train_cfg']['detections_file'] = str(tmp_path / 'absent.json')
    model = MODELS.build(cfg)
    model.eval()
    with torch.no_grad():
        model(**model.data_preprocessor(make_batch(num_views, [1], seed=5), False),
              mode='predict')
