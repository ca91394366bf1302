"""``evaluation/class_confusion_2d.py``: the class each finding box is named in each view,
counted by hand on a made-up COCO split."""
from projects.mv2d_xray.mv2d_xray.baselines.triangulation import TriangulationConfig
from projects.mv2d_xray.mv2d_xray.evaluation.class_confusion_2d import (class_confusion_2d,
                                                                        class_confusion_table)


def _coco():
    """Two views; classes pore (id 1) and inclusion (id 2); 4 px finding boxes."""
    images = [dict(id=i, file_name=f'v{i}.png', width=64, height=64, token='t',
                   view=f'VIEW_0{i}') for i in (1, 2)]
    anns = [dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 4, 4], iscrowd=0),
            dict(id=2, image_id=1, category_id=2, bbox=[30, 30, 4, 4], iscrowd=0),
            dict(id=3, image_id=1, category_id=2, bbox=[50, 10, 4, 4], iscrowd=0),
            dict(id=4, image_id=2, category_id=2, bbox=[10, 10, 4, 4], iscrowd=0),
            dict(id=5, image_id=2, category_id=1, bbox=[40, 40, 4, 4], iscrowd=0),
            dict(id=6, image_id=2, category_id=1, bbox=[20, 50, 4, 4], iscrowd=1)]
    cats = [dict(id=1, name='pore'), dict(id=2, name='inclusion')]
    return dict(images=images, annotations=anns, categories=cats)


def _det(image_id, cat, x, y, score=0.9, size=4.0):
    return dict(image_id=image_id, category_id=cat, bbox=[x, y, size, size], score=score)


def test_counts_by_hand():
    """View 1: the pore named pore (2 px off, inside the 3 px gate; a farther inclusion
    detection also in the gate loses to the nearer one); the first inclusion named pore;
    the second inclusion only by a detection 4 px off (outside 3 px) and one under the
    score threshold: none. View 2: the inclusion named inclusion, the pore named pore by a
    12 px box 5 px off (its gate is half its side, 6 px); the ignore region and the
    detection on it count nowhere."""
    dets = [_det(1, 1, 12, 10), _det(1, 2, 9.5, 12.5),          # pore: the nearer (pore)
            _det(1, 1, 30, 30),                                  # inclusion -> pore
            _det(1, 2, 54, 10), _det(1, 2, 50, 10, score=0.01),  # inclusion -> none
            _det(2, 2, 10, 10),                                  # inclusion -> inclusion
            _det(2, 1, 41, 36, size=12.0),                       # pore, centre 5 px off
            _det(2, 1, 20, 50)]                                  # on the ignore region
    result = class_confusion_2d(_coco(), dets)
    assert result['classes'] == ['pore', 'inclusion']
    assert result['counts'] == [[2, 0, 0], [1, 1, 1]]
    # a larger gate takes the 4 px-off detection: the second inclusion named inclusion
    assert class_confusion_2d(_coco(), dets, TriangulationConfig(gate_px=4.5))['counts'] == [
        [2, 0, 0], [1, 2, 0]]
    # without the gate's share of the box side the 12 px box's 5 px are too far
    assert class_confusion_2d(_coco(), dets, TriangulationConfig(gate_frac=0.0))['counts'] == [
        [1, 0, 1], [1, 1, 1]]
    # two detections equally near: the better-scoring one names the finding
    tie = [_det(1, 2, 12, 10, score=0.4), _det(1, 1, 8, 10, score=0.6)]
    assert class_confusion_2d(_coco(), tie)['counts'][0] == [1, 0, 1]   # view 2's: none
    assert class_confusion_2d(_coco(), tie[::-1])['counts'][0] == [1, 0, 1]
    # no detections at all: every finding in `none`
    assert class_confusion_2d(_coco(), [])['counts'] == [[0, 0, 2], [0, 0, 3]]
    table = class_confusion_table(result)
    assert '| inclusion' in table and '0.50' in table and '1.00' in table
