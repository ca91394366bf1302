"""``MV2DXrayInferencer`` in Python (the README's few lines): a study folder gives the same
prediction as the config's test dataset item of the case it was exported from, a list of
studies gives one sample each, another number of views is said once, and the config's
``image_intensity`` sets the accepted grey values."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import import_from

from data_converters.export_study import export_study
from projects.mv2d_xray.core.study import StudyError

test_explain_tool = import_from(osp.join('tests', 'tools'), 'test_explain_tool')
copy_study = import_from(osp.join('tests', 'tools'), 'test_infer_tool').copy_study

CASE = 'LIDC-IDRI-0001'
#: The small demo config and its seeded initial checkpoint (``test_explain_tool``).
explain_setup = test_explain_tool.explain_setup


@pytest.fixture(scope='module')
def inferencer_and_study(explain_setup, demo_dataset, tmp_path_factory):
    from projects.mv2d_xray.mv2d_xray.apis import MV2DXrayInferencer
    config, checkpoint, _ = explain_setup
    study = str(tmp_path_factory.mktemp('api') / CASE)
    export_study(demo_dataset.val_pkl, CASE, study)
    notes = []
    inferencer = MV2DXrayInferencer(config, checkpoint, device='cpu', warn=notes.append)
    return inferencer, study, notes


def test_study_equals_the_dataset_item(inferencer_and_study, demo_dataset):
    from mmdet3d.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    inferencer, study, _ = inferencer_and_study
    sample, = inferencer(study)
    pred = inferencer.postprocess(sample)
    dataset = DATASETS.build(inferencer.cfg.test_dataloader.dataset)
    index = [dataset.get_data_info(i)['token'] for i in range(len(dataset))].index(CASE)
    model = inferencer.model
    with torch.no_grad():
        expected = model(**model.data_preprocessor(pseudo_collate([dataset[index]]), False),
                         mode='predict')[0]
    reference = inferencer.postprocess(expected)
    assert len(pred.scores) == len(reference.scores) > 0
    np.testing.assert_allclose(pred.boxes, reference.boxes, rtol=0, atol=1e-3)     # mm
    np.testing.assert_allclose(pred.scores, reference.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sample.metainfo['lidar2img'], expected.metainfo['lidar2img'],
                               rtol=1e-12, atol=1e-9)
    assert sample.metainfo['token'] == CASE and inferencer.classes == ('nodule',)


def test_many_studies_and_fewer_views_said_once(inferencer_and_study, tmp_path):
    inferencer, study, notes = inferencer_and_study
    fewer = [copy_study(study, tmp_path / name, [0, 2, 4, 6, 8]) for name in ('a', 'b')]
    samples = inferencer(fewer)
    assert [s.metainfo['token'] for s in samples] == ['a', 'b']
    assert [len(s.metainfo['view_names']) for s in samples] == [5, 5]
    assert notes == ['studies with 5 views (e.g. a): the model was trained on 10; it takes '
                     'any number of views, but was not tested on this one']


def test_intensity_convention_comes_from_the_config(inferencer_and_study, tmp_path):
    from projects.mv2d_xray.core.study import IntensityConvention
    inferencer, study, _ = inferencer_and_study
    wide = copy_study(study, tmp_path / 'wide')
    for v in range(10):
        path = osp.join(wide, f'VIEW_{v:02d}.png')
        cv2.imwrite(path, cv2.imread(path, cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
    with pytest.raises(StudyError, match=r'VIEW_00.png is a 16-bit png with values'):
        inferencer.load_study(wide)
    default = inferencer.intensity
    try:
        inferencer.intensity = IntensityConvention.from_setting(
            dict(low=0, high=65535, bit_depth=16, description='16-bit PNG'))
        study_16, images = inferencer.load_study(wide)
        assert images[0].bit_depth == 16 and study_16.num_views == 10
    finally:
        inferencer.intensity = default
