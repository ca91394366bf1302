"""``projects.mv2d_xray.core.data_format``: the readers refuse what is not this format
with one line naming the file, the prediction format is validated item by item, the
split is reproducible."""
import pickle

import numpy as np
import pytest

from projects.mv2d_xray.core.data_format import (FORMAT_VERSION, CasePred, InfoFormatError,
                                                 PredictionFormatError, coco_path, load_coco,
                                                 load_infos, parse_predictions,
                                                 predictions_to_json, resolve_detections,
                                                 split_patients, view_box_ignored)


def write_infos(path, metainfo, data_list=()):
    path.write_bytes(pickle.dumps(dict(metainfo=metainfo, data_list=list(data_list))))
    return str(path)


META = dict(format_version=FORMAT_VERSION, classes=('nodule',), geometry=dict(num_views=2))


def test_load_infos_accepts_this_format(tmp_path):
    path = write_infos(tmp_path / 'x_infos_val.pkl', META, [dict(token='a'), dict(token='b')])
    assert [i['token'] for i in load_infos(path)['data_list']] == ['a', 'b']
    assert coco_path(path) == str(tmp_path / 'x_infos_val_2d.coco.json')


@pytest.mark.parametrize('metainfo, data_list, message', [
    (dict(META, format_version=0), [], r'format_version 0, but this code reads '
                                       rf'format_version {FORMAT_VERSION}'),
    ({k: v for k, v in META.items() if k != 'classes'}, [], r"metainfo has no 'classes'"),
    (META, [dict(token='a'), dict(token='a')], r'case tokens must be present and unique'),
])
def test_load_infos_refuses_another_format(tmp_path, metainfo, data_list, message):
    path = write_infos(tmp_path / 'bad.pkl', metainfo, data_list)
    with pytest.raises(InfoFormatError, match=r'bad\.pkl.*' + message):
        load_infos(path)


def test_load_infos_refuses_other_files(tmp_path):
    other = tmp_path / 'list.pkl'
    other.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(InfoFormatError, match=r'list\.pkl is not an info pickle'):
        load_infos(str(other))
    with pytest.raises(FileNotFoundError, match=r'info pickle not found: .*none\.pkl'):
        load_infos(str(tmp_path / 'none.pkl'))


def test_predictions_round_trip_and_item_errors():
    obj = {'results': {'a': [{'bbox_3d': [1, 2, 3, 4, 5, 6, 0], 'score': 0.5, 'label': 1}],
                       'b': []}}
    preds = parse_predictions(obj, num_classes=2)
    np.testing.assert_array_equal(preds['a'].boxes, [[1, 2, 3, 4, 5, 6, 0]])
    assert preds['a'].labels.tolist() == [1] and len(preds['b'].scores) == 0
    assert predictions_to_json(preds) == {'results': {
        'a': [{'bbox_3d': [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0], 'score': 0.5, 'label': 1}],
        'b': []}}
    assert isinstance(preds['a'], CasePred)
    bad_items = [
        ({'bbox_3d': [1, 2, 3], 'score': 0.5, 'label': 0}, r'bbox_3d must be 7 numbers'),
        ({'bbox_3d': [0, 0, 0, -1, 1, 1, 0], 'score': 0.5, 'label': 0}, r'bbox_3d has a negative size'),
        ({'bbox_3d': [0] * 7, 'score': float('nan'), 'label': 0}, r'score must be a finite'),
        ({'bbox_3d': [0] * 7, 'score': 0.5, 'label': 2}, r'label 2 is not a class index'),
        ({'bbox_3d': [0] * 7, 'label': 0}, r'missing score'),
    ]
    for item, message in bad_items:
        with pytest.raises(PredictionFormatError, match=r"results\['a'\]\[0\]: " + message):
            parse_predictions({'results': {'a': [item]}}, num_classes=2)
    with pytest.raises(PredictionFormatError, match='expected a JSON object'):
        parse_predictions([], num_classes=1)


def test_coco_boxes_of_ignore_regions_and_of_views_that_do_not_show_a_finding_are_crowds():
    """``iscrowd`` is 1 for an ignore region's box and for a finding's box its view flags,
    0 for the rest (as the dataset splits them in training)."""
    from projects.mv2d_xray.core.data_format import build_coco
    eye = np.eye(4).tolist()
    img = dict(img_path='a.png', width=8, height=8, theta_rad=0.0, cam2img=eye,
               lidar2cam=eye, lidar2img=eye)
    instances = [dict(nodule_id=f't/{i}', bbox_3d=[0.0] * 7, diameter_mm=1.0, num_readers=1,
                      characteristics={}, ignore_flag=flag) for i, flag in enumerate((0, 1))]
    boxes = [dict(bbox=[1.0, 1.0, 3.0, 3.0], bbox_label=0, instance_id=i, ignore_flag=flag)
             for i, flag in ((0, 0), (0, 1), (1, 0))]
    info = dict(token='t', images={'VIEW_00': img}, instances=instances,
                cam_instances={'VIEW_00': boxes})
    coco = build_coco([info], dict(classes=('pore', ), dataset='x', format_version=1))
    assert [a['iscrowd'] for a in coco['annotations']] == [0, 1, 1]


def test_a_view_box_is_ignored_by_its_own_flag_or_its_findings():
    """Either flag makes the box an ignore box; a missing flag (an older pickle) is 0."""
    cases = {(0, 0): False, (0, 1): True, (1, 0): True, (1, 1): True}
    for (box_flag, finding_flag), ignored in cases.items():
        assert view_box_ignored(dict(ignore_flag=box_flag),
                                dict(ignore_flag=finding_flag)) is ignored
    assert view_box_ignored({}, dict(ignore_flag=0)) is False
    assert view_box_ignored({}, dict(ignore_flag=1)) is True


def test_coco_reader_and_detections(tmp_path):
    coco = dict(images=[dict(id=1, token='a', view='VIEW_00')], annotations=[],
                categories=[dict(id=1, name='nodule')])
    assert load_coco(coco) is coco
    dets = resolve_detections(coco, [dict(token='a', view='VIEW_00', category_id=1,
                                          bbox=[1, 2, 3, 4], score=0.9)])
    assert dets[0]['image_id'] == 1 and dets[0]['bbox'] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r'detection \[0\]: no image_id'):
        resolve_detections(coco, [dict(token='b', view='VIEW_00', category_id=1,
                                       bbox=[1, 2, 3, 4], score=0.9)])
    # an image_id and a token/view that name different images: another split's detections
    coco['images'].append(dict(id=2, token='a', view='VIEW_01'))
    both = dict(image_id=2, token='a', view='VIEW_01', category_id=1, bbox=[1, 2, 3, 4],
                score=0.9)
    assert resolve_detections(coco, [both])[0]['image_id'] == 2
    with pytest.raises(ValueError, match=r"detection \[0\]: image_id 1 is token/view "
                                         r"\('a', 'VIEW_00'\).*\('a', 'VIEW_01'\).*another split"):
        resolve_detections(coco, [dict(both, image_id=1)])
    with pytest.raises(ValueError, match=r'another split'):       # one of the two given
        resolve_detections(coco, [dict(both, image_id=1, token=None)])
    assert resolve_detections(coco, [dict(both, view=None)])[0]['image_id'] == 2
    not_coco = tmp_path / 'x.json'
    not_coco.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r'x\.json is not a COCO file'):
        load_coco(str(not_coco))


def test_split_patients_is_reproducible():
    patients = [f'p{i:03d}' for i in range(50)]
    val = split_patients(patients, 0.2, seed=3)
    assert len(val) == 10 and val == split_patients(list(reversed(patients)), 0.2, seed=3)
    assert val != split_patients(patients, 0.2, seed=4)
    forced = split_patients(patients, 0.2, seed=3, force_val=['p007'])
    assert 'p007' in forced and len(forced) == 10
    assert split_patients(patients, 0.0, seed=0) == set()
