"""``visualization/case_views.py`` and ``tools/visualize.py case``: projected 3D box
wireframes and case grids written as PNG."""
import json

import cv2
import numpy as np
import pytest
from eval_fake_data import eval_geometry, run_tool, write_eval_dataset

from projects.mv2d_xray.core.geometry import box3d_corners, project_points
from projects.mv2d_xray.mv2d_xray.visualization.case_views import (BOX_EDGES, IGNORE_COLOR,
                                                                   PRED3D_COLOR, draw_case,
                                                                   project_box_edges)


def test_box_edges_are_the_12_projected_edges():
    assert len(BOX_EDGES) == 12
    lidar2img = eval_geometry().lidar2img(3)
    box = np.array([10.0, -5.0, 20.0, 8.0, 6.0, 4.0, 0.0])
    segments = project_box_edges(lidar2img, box)
    corners = box3d_corners(box)
    uv, _ = project_points(lidar2img, corners)
    assert segments.shape == (12, 2, 2)
    for (i, j), seg in zip(BOX_EDGES, segments):
        # an edge joins corners that differ along exactly one axis, by that extent
        diff = np.abs(corners[i] - corners[j])
        assert np.count_nonzero(diff > 1e-9) == 1
        assert diff.max() == pytest.approx(box[3 + int(np.argmax(diff))])
        np.testing.assert_allclose(seg, uv[[i, j]])
    # a box behind the source cannot be drawn
    source = eval_geometry().source_position(3)
    assert project_box_edges(lidar2img, [*(2 * source), 5, 5, 5, 0]) is None


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_eval_dataset(str(tmp_path_factory.mktemp('viz_data')))


def _count_colour(path, hex_colour, tol=40):
    img = cv2.imread(path)[:, :, ::-1].astype(int)                 # RGB
    rgb = np.array([int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)])
    return int((np.abs(img - rgb).max(-1) < tol).sum())


def test_case_grid_with_and_without_predictions(dataset, tmp_path, capsys):
    import mmengine
    infos = mmengine.load(dataset['infos'])
    info = infos['data_list'][0]
    shift = np.array([3.0, 0.0, -4.0])                               # 5 mm off
    preds = {'results': {info['token']: [
        dict(bbox_3d=[*(np.asarray(i['bbox_3d'][:3]) + shift), *i['bbox_3d'][3:]],
             score=0.9, label=0) for i in info['instances']]}}
    pred = tmp_path / 'pred.json'
    pred.write_text(json.dumps(preds))
    dets = tmp_path / 'dets.json'
    with open(dataset['coco']) as f:
        coco = json.load(f)
    dets.write_text(json.dumps([dict(image_id=a['image_id'], category_id=1, bbox=a['bbox'],
                                     score=0.8) for a in coco['annotations']]))
    with_pred, without = str(tmp_path / 'with.png'), str(tmp_path / 'without.png')
    assert run_tool('visualize', 'case', '--infos', dataset['infos'], '--case', info['token'],
                    '--pred', str(pred), '--dets2d', str(dets), '--out', with_pred) == 0
    printed = capsys.readouterr().out
    # the per-finding summary: each finding's nearest prediction is the 5 mm shifted one
    assert printed.count('nearest drawn prediction 5.0 mm') == len(info['instances'])
    assert run_tool('visualize', 'case', '--infos', dataset['infos'], '--case', info['token'],
                    '--out', without) == 0
    assert 'no prediction drawn' in capsys.readouterr().out
    for path in (with_pred, without):
        img = cv2.imread(path)
        assert img is not None and img.shape[0] > 500 and img.shape[1] > 1000
    # the predicted 3D boxes are drawn (magenta) only when there are predictions; without,
    # magenta is only the legend's line
    drawn, legend = _count_colour(with_pred, PRED3D_COLOR), _count_colour(without, PRED3D_COLOR)
    assert legend < 100 and drawn > legend + 1000, (drawn, legend)


def test_a_2d_box_is_drawn_as_ignored_by_its_findings_flag_or_its_own(dataset, tmp_path):
    """The same figure whether the ignore region's 2D boxes carry the flag themselves or
    only its instance does (``core.data_format.view_box_ignored``, the training's rule).
    Zoomed on the ignore region, where its 2D box lies inside its 3D box's wireframe."""
    import copy

    import mmengine
    info = mmengine.load(dataset['infos'])['data_list'][2]
    region = next(i for i, inst in enumerate(info['instances']) if inst['ignore_flag'])
    only_instance = copy.deepcopy(info)
    for boxes in only_instance['cam_instances'].values():
        for box in boxes:
            box['ignore_flag'] = 0
    paths = [str(tmp_path / f'{name}.png') for name in ('both', 'instance')]
    for item, path in zip((info, only_instance), paths):
        draw_case(item, dataset['root'], path, zoom_finding=region)
    both, instance = (_count_colour(path, IGNORE_COLOR) for path in paths)
    assert both > 0 and instance == both


def test_case_bad_input(dataset, tmp_path, capsys):
    out = tmp_path / 'x.png'
    assert run_tool('visualize', 'case', '--infos', dataset['infos'], '--case', 'nope',
                    '--out', str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case 'nope' is not in" in err[0]
    assert run_tool('visualize', 'case', '--infos', dataset['infos'], '--case',
                    'evalfake-0000', '--data-root', str(tmp_path), '--out', str(out)) == 2
    assert 'cannot read view image' in capsys.readouterr().err
    dets = tmp_path / 'dets.json'
    dets.write_text(json.dumps([dict(image_id=99999, category_id=1, bbox=[0, 0, 1, 1],
                                     score=0.5)]))
    assert run_tool('visualize', 'case', '--infos', dataset['infos'], '--case',
                    'evalfake-0000', '--dets2d', str(dets), '--out', str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {dets}: detection [0]: image_id')
    assert not out.exists()


def test_demo_case_lidc_idri_0001(demo_dataset, tmp_path, capsys):
    """What ``make demo`` does for LIDC-IDRI-0001, with the triangulation baseline's
    predictions from the converter's 2D ground truth: the picture is written and the
    30 mm nodule's nearest prediction is within 10 % of its size."""
    pred = str(tmp_path / 'tri.json')
    assert run_tool('triangulate', '--infos', demo_dataset.val_pkl, '--gt-2d',
                    '--out', pred) == 0
    out = str(tmp_path / 'lidc1.png')
    capsys.readouterr()
    assert run_tool('visualize', 'case', '--infos', demo_dataset.val_pkl,
                    '--case', 'LIDC-IDRI-0001', '--pred', pred, '--out', out) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if 'finding 0' in ln][0]
    assert float(line.split('nearest drawn prediction ')[1].split(' mm')[0]) < 3.3
    assert cv2.imread(out) is not None
    assert _count_colour(out, PRED3D_COLOR) > 1000
