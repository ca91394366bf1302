"""``visualization/metric_plots.py`` and ``tools/visualize.py metrics``: FROC curves and
per-size-band bars of metrics JSON files written as PNG."""
import json

import cv2
import pytest
from eval_fake_data import run_tool, write_eval_dataset


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_eval_dataset(str(tmp_path_factory.mktemp('plot_data')))


def test_metrics_plots(dataset, tmp_path, capsys):
    import mmengine
    infos = mmengine.load(dataset['infos'])
    files = []
    for name, drop in (('good', 0), ('worse', 2)):
        preds = {'results': {d['token']: [dict(bbox_3d=i['bbox_3d'], score=0.9, label=0)
                                          for i in d['instances'][drop:]]
                             for d in infos['data_list']}}
        pred = tmp_path / f'{name}.json'
        pred.write_text(json.dumps(preds))
        files.append(str(tmp_path / f'{name}_metrics.json'))
        assert run_tool('evaluate', '--gt', dataset['infos'], '--pred', str(pred),
                        '--out', files[-1]) == 0
    one, two = str(tmp_path / 'one.png'), str(tmp_path / 'two.png')
    assert run_tool('visualize', 'metrics', files[0], '--out', one) == 0
    assert run_tool('visualize', 'metrics', *files, '--labels', 'good', 'worse',
                    '--out', two) == 0
    # the benchmark's four methods: every result keeps a visible shade
    four = str(tmp_path / 'four.png')
    assert run_tool('visualize', 'metrics', *files, *files, '--labels', 'a', 'b', 'c', 'd',
                    '--out', four) == 0
    for path in (one, two, four):
        assert cv2.imread(path) is not None
    capsys.readouterr()
    assert run_tool('visualize', 'metrics', dataset['coco'], '--out', one) == 2
    assert 'is not a metrics JSON' in capsys.readouterr().err
    assert run_tool('visualize', 'metrics', *files, '--labels', 'a', '--out', one) == 2
