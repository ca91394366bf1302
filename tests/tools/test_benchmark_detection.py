"""tools/benchmark_detection.py: bad arguments are one line, the training folders, and the
report's grouping of the findings by the views that detect them (the full run is `make
benchmark`; its scoring is tested in tests/evaluation/test_benchmark_report.py)."""
import json
import os
import os.path as osp

from test_train_test import run_tool
from xray_fake_data import write_fake_dataset


def test_too_few_resamples_is_refused(tmp_path):
    out = run_tool('benchmark_detection.py', '--resamples', '5', '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert '--resamples must be at least 10' in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_domain_is_refused(tmp_path):
    out = run_tool('benchmark_detection.py', '--domains', 'lungs', '--work-dir', str(tmp_path))
    assert out.returncode == 2 and "invalid choice: 'lungs'" in out.stderr


def test_variant_needs_test_cfg_options(tmp_path):
    out = run_tool('benchmark_detection.py', '--split', 'val', '--variant', 'vs',
                   '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert ('--variant and --test-cfg-options / --cfg-options / --cfg-options-2d / '
            '--amp-2d / --cycles-2d / --train-nodules-2d / --cross-fit-2d go together') \
        in out.stderr
    out = run_tool('benchmark_detection.py', '--variant', 'a/b', '--test-cfg-options', 'x=1',
                   '--work-dir', str(tmp_path))
    assert out.returncode == 2 and '--variant must be letters' in out.stderr
    out = run_tool('benchmark_detection.py', '--cfg-options', 'model.roi_head.view_probes=1',
                   '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert '--variant and --test-cfg-options / --cfg-options / --cfg-options-2d' in out.stderr
    out = run_tool('benchmark_detection.py', '--cfg-options-2d', 'train_cfg.max_epochs=12',
                   '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert '--variant and --test-cfg-options / --cfg-options / --cfg-options-2d' in out.stderr
    out = run_tool('benchmark_detection.py', '--variant', 'long', '--cfg-options-2d',
                   'max_epochs', '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert "--cfg-options-2d takes KEY=VALUE, got 'max_epochs'" in out.stderr
    out = run_tool('benchmark_detection.py', '--variant', 'probes', '--cfg-options',
                   'view_probes', '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert "--cfg-options takes KEY=VALUE, got 'view_probes'" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_benchmark_json_is_refused(tmp_path):
    """Runs add to an earlier benchmark.json; one that is not a report stops the run
    before anything is built or trained."""
    (tmp_path / 'benchmark.json').write_text('[1, 2]')
    out = run_tool('benchmark_detection.py', '--domains', 'chest', '--work-dir',
                   str(tmp_path))
    assert out.returncode == 2
    assert 'benchmark.json is not a benchmark report' in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['benchmark.json']


def test_a_run_keeps_the_entries_another_run_wrote_meanwhile(tmp_path):
    """The report is merged when a run ends, from the file as it is then: an entry a
    run beside it wrote in the meantime stays; this run's replaces one of the same key."""
    from projects.mv2d_xray.core.io import read_json, write_json
    merge_report = _benchmark_module().merge_report
    path = str(tmp_path / 'benchmark.json')
    assert merge_report(path, {'chest': {'val+a': {'CPM': 0.1}}}) == \
        {'chest': {'val+a': {'CPM': 0.1}}}                            # no report yet
    write_json(path, dict(domains={'chest': {'val+a': {'CPM': 0.1}, 'val+b': {'CPM': 0.2}},
                                   'blades': {'val': {'CPM': 0.3}}}))
    merged = merge_report(path, {'chest': {'val+a': {'CPM': 0.5}, 'val+c': {'CPM': 0.6}}})
    assert merged == {'chest': {'val+a': {'CPM': 0.5}, 'val+b': {'CPM': 0.2},
                                'val+c': {'CPM': 0.6}},
                      'blades': {'val': {'CPM': 0.3}}}
    assert read_json(path)['domains']['chest']['val+a'] == {'CPM': 0.1}   # merging writes nothing


def test_mv2d_training_folder_is_named_after_its_overrides():
    """Variants that retrain MV2D (``--cfg-options``) get one folder per set of overrides,
    shared by variants with the same ones; test-only variants reuse ``mv2d``."""
    import hashlib
    mv2d_folder = _benchmark_module().mv2d_folder
    assert mv2d_folder([]) == 'mv2d'
    probes = ['model.roi_head.view_probes=True']
    digest = hashlib.sha1(probes[0].encode()).hexdigest()[:8]
    assert mv2d_folder(probes) == f'mv2d-model.roi_head.view_probes=True-{digest}'
    assert mv2d_folder(probes) == mv2d_folder(list(probes))
    assert mv2d_folder(['a=1', 'b=[1, 2]']).startswith('mv2d-a=1+b=_1__2_-')
    # overrides that read alike never share a folder
    assert mv2d_folder(['a=1', 'b=2']) != mv2d_folder(['a=1+b=2'])
    assert mv2d_folder(['x=[1,2]']) != mv2d_folder(['x=(1,2)'])
    assert len(mv2d_folder(['k=' + 'v' * 300])) == len('mv2d-') + 80 + 9


def test_a_retrained_2d_stage_gets_its_own_folders():
    """``--cfg-options-2d`` trains the 2D stage into a folder named after its overrides,
    and MV2D from it into one named after both lists, so neither reuses the default
    trainings nor another 2D stage's MV2D."""
    import hashlib
    bench = _benchmark_module()
    assert bench.training_folder('2d-stage', []) == '2d-stage'
    longer = ['train_cfg.max_epochs=12']
    digest = hashlib.sha1(longer[0].encode()).hexdigest()[:8]
    assert bench.training_folder('2d-stage', longer) == f'2d-stage-{longer[0]}-{digest}'
    assert bench.mv2d_folder([], []) == 'mv2d'
    assert bench.mv2d_folder([], longer) not in ('mv2d', bench.mv2d_folder(longer))
    assert bench.mv2d_folder([], longer) == bench.training_folder('mv2d', ['2d:' + longer[0]])
    probes = ['model.roi_head.view_probes=True']
    assert bench.mv2d_folder(probes, longer) not in (bench.mv2d_folder(probes),
                                                     bench.mv2d_folder([], longer))


def test_train_nodules_2d_is_refused_where_it_cannot_work(tmp_path):
    """``--train-nodules-2d`` is a variant of the chest benchmark only; the blades source
    has no such build. Refused before anything is built."""
    out = run_tool('benchmark_detection.py', '--train-nodules-2d', '15', '--work-dir',
                   str(tmp_path))
    assert out.returncode == 2 and 'go together' in out.stderr
    out = run_tool('benchmark_detection.py', '--variant', 'tn', '--train-nodules-2d', '15',
                   '--work-dir', str(tmp_path))                 # default: chest and blades
    assert out.returncode == 2
    assert ('--train-nodules-2d: the blades benchmark has no such build (blades has no '
            'option for the findings per training case)') in out.stderr
    out = run_tool('benchmark_detection.py', '--domains', 'chest', '--variant', 'tn',
                   '--train-nodules-2d', '0', '--work-dir', str(tmp_path))
    assert out.returncode == 2 and '--train-nodules-2d must be at least 1, got 0' in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_2d_stage_of_its_own_build_gets_its_own_folders():
    """The 2D stage's own training build (``--train-nodules-2d``) is ``<data>-tn<N>``; its
    data root comes after ``--cfg-options-2d`` (it overrides the benchmark's) and names
    the 2D stage's and MV2D's folders, so they never reuse the default trainings."""
    bench = _benchmark_module()
    assert bench.train_build('data/chest-bench', None) is None
    assert bench.train_build('data/chest-bench/', 15) == 'data/chest-bench-tn15'
    longer = ['train_cfg.max_epochs=12']
    assert bench.stage_2d_options(longer, None) == longer
    options = bench.stage_2d_options(longer, 'data/chest-bench-tn15')
    assert options == longer + ['train_dataloader.dataset.data_root=data/chest-bench-tn15/']
    folders = {bench.training_folder('2d-stage', o) for o in ([], longer, options)}
    assert len(folders) == 3
    assert bench.mv2d_folder([], options) not in (bench.mv2d_folder([], longer), 'mv2d')
    # the domain that has the build names the converter's flag
    assert bench.DOMAINS['chest'].train_nodules_flag == '--train-nodules'
    assert bench.DOMAINS['blades'].train_nodules_flag is None


def test_both_stages_train_on_the_domains_training_build():
    """The chest benchmark trains both stages on its 15-nodule build, the folder its
    configs name as ``train_data_root``; val and the scored split stay the benchmark's
    own build. The blades benchmark trains on its own build."""
    from conftest import REPO_ROOT
    from mmengine.config import Config
    bench = _benchmark_module()
    chest = bench.DOMAINS['chest']
    assert chest.train_nodules == 15 and bench.DOMAINS['blades'].train_nodules is None
    train_data = bench.train_build(chest.data, chest.train_nodules)
    for config in (chest.config, chest.config_2d):
        cfg = Config.fromfile(osp.join(REPO_ROOT, config), import_custom_modules=False)
        assert cfg.train_dataloader.dataset.data_root == train_data + '/'
        assert cfg.val_dataloader.dataset.data_root == chest.data + '/'
        assert cfg.test_dataloader.dataset.data_root == chest.data + '/'
    options = dict(o.split('=', 1) for o in
                   bench.data_options(chest, 'x/bench', 'val', 'x/bench-tn15'))
    assert options['train_dataloader.dataset.data_root'] == 'x/bench-tn15/'
    assert options['train_dataloader.dataset.ann_file'] == 'chest_bench_infos_train.pkl'
    assert options['val_dataloader.dataset.data_root'] == 'x/bench/'
    assert options['test_dataloader.dataset.data_root'] == 'x/bench/'
    assert options['test_dataloader.dataset.ann_file'] == 'chest_bench_infos_val.pkl'
    assert options['test_evaluator.ann_file'] == 'x/bench/chest_bench_infos_val.pkl'
    # a val run and a test run reuse the same trainings
    for config in (chest.config, chest.config_2d):
        config = osp.join(REPO_ROOT, config)
        assert bench.training_digest(config, bench.data_options(chest, 'x', 'val', 'x-tn15')) \
            == bench.training_digest(config, bench.data_options(chest, 'x', 'test', 'x-tn15'))


#: The classes each benchmark's splits hold (the converters' metainfo).
DOMAIN_CLASSES = {'chest': ('nodule', ), 'blades': ('pore', 'inclusion', 'crack')}


def _run_domain(tmp_path, monkeypatch, *argv, on_step=None, domain_name='chest',
                files=None, classes=None):
    """``run_domain`` on ``domain_name`` (default chest), its val split holding ``classes``
    (default the domain's: :data:`DOMAIN_CLASSES`), with its steps recorded instead of
    run: the converter commands, and per training its folder and its overrides as
    mmengine's ``DictAction`` reads them (a later ``KEY=VALUE`` wins); ``on_step(command)``
    is called for each step besides, and the files it returns go into the dict ``files``."""
    import dataclasses
    bench = _benchmark_module()
    commands, trainings = [], []

    def run_step(name, command, log):
        commands.append(command)
        if on_step is not None:
            on_step(command)
    monkeypatch.setattr(bench, 'run_step', run_step)

    def train(name, config, work_dir, cfg_options, log):
        trainings.append((work_dir, dict(o.split('=', 1) for o in cfg_options)))
        checkpoint = osp.join(work_dir, 'epoch_1.pth')
        if not osp.isfile(checkpoint):      # the volume head's digest reads its stat
            os.makedirs(work_dir, exist_ok=True)
            open(checkpoint, 'wb').close()
        return checkpoint
    monkeypatch.setattr(bench, 'train', train)
    data = tmp_path / 'bench'
    data.mkdir(exist_ok=True)
    domain = dataclasses.replace(bench.DOMAINS[domain_name], data=str(data))
    write_fake_dataset(str(data), cases=[], classes=classes or DOMAIN_CLASSES[domain_name],
                       split='val', prefix=domain.prefix)
    args = bench.parse_args(['--domains', domain_name, '--split', 'val', '--work-dir',
                             str(tmp_path / 'work'), *argv])
    returned = bench.run_domain(domain_name, domain, args, [])
    if files is not None:
        files.update(returned)
    builds = [c[c.index('--out') + 1:] for c in commands if 'data_converters' in c]
    return str(data), builds, trainings


def test_each_stage_trains_on_its_build(tmp_path, monkeypatch):
    """By default the benchmark builds the chest's 15-nodule training set beside its own
    and trains both stages on it; ``--train-nodules-2d N`` moves the 2D stage alone; a
    variant's own training data root wins for MV2D; val and test stay the benchmark's."""
    root = 'train_dataloader.dataset.data_root'
    data, builds, trainings = _run_domain(tmp_path, monkeypatch)
    assert builds == [[data, '--workers', '2'],
                      [data + '-tn15', '--workers', '2', '--train-nodules', '15']]
    (dir_2d, stage_2d), (dir_mv2d, mv2d) = trainings
    assert stage_2d[root] == mv2d[root] == data + '-tn15/'
    assert stage_2d['val_dataloader.dataset.data_root'] == data + '/'
    assert mv2d['test_dataloader.dataset.data_root'] == data + '/'
    assert mv2d['load_from'] == osp.join(dir_2d, 'epoch_1.pth')
    assert (osp.basename(dir_2d), osp.basename(dir_mv2d)) == ('2d-stage', 'mv2d')

    _, builds, trainings = _run_domain(tmp_path, monkeypatch, '--variant', 'tn5',
                                       '--train-nodules-2d', '5')
    assert builds[2] == [data + '-tn5', '--workers', '2', '--train-nodules', '5']
    (dir_2d, stage_2d), (dir_mv2d, mv2d) = trainings
    assert (stage_2d[root], mv2d[root]) == (data + '-tn5/', data + '-tn15/')
    assert osp.basename(dir_2d) != '2d-stage' and osp.basename(dir_mv2d) != 'mv2d'

    # the domain's own number: the same build and the same trainings as the default
    _, builds, trainings = _run_domain(tmp_path, monkeypatch, '--variant', 'tn15',
                                       '--train-nodules-2d', '15')
    assert len(builds) == 2
    assert [osp.basename(t[0]) for t in trainings] == ['2d-stage', 'mv2d']

    _, _, trainings = _run_domain(tmp_path, monkeypatch, '--variant', 'mix', '--cfg-options',
                                  f'{root}={data}/')
    (_, stage_2d), (_, mv2d) = trainings
    assert (stage_2d[root], mv2d[root]) == (data + '-tn15/', data + '/')


def test_blades_also_triangulate_their_2d_detections_nmsed_per_class(tmp_path, monkeypatch):
    """Several classes (blades): a second test run, of MV2D's 2D stage alone, with the
    variant's overrides and then the 2D-stage-only overrides and the per-class NMS (the
    last ``KEY=VALUE``s, so they win), whose 2D detections are triangulated as
    ``triangulation_nms_per_class``; one class (chest): no such run. The split's classes
    decide, not the domain's name."""
    from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import METHODS
    bench = _benchmark_module()
    commands, files = [], {}
    _run_domain(tmp_path, monkeypatch, '--variant', 'k30', '--test-cfg-options',
                'model.test_cfg.detection_proposal.max_per_img=30',
                on_step=commands.append, domain_name='blades', files=files)
    assert set(METHODS) - set(files) == {'volume_head'}     # step 6 scores the others
    tests = [c for c in commands if 'tools/test.py' in c]
    assert len(tests) == 2
    config, nms = tests
    assert 'test_evaluator.evaluate_3d=False' in bench.DETECTIONS_ONLY_OPTIONS
    own = [*bench.DETECTIONS_ONLY_OPTIONS, bench.NMS_PER_CLASS_OPTION]
    assert nms[-len(own):] == own
    assert nms[:-len(own)][nms.index('--work-dir') + 2:] == \
        config[config.index('--work-dir') + 2:]
    assert 'model.test_cfg.detection_proposal.max_per_img=30' in nms
    nms_dets = osp.join(nms[nms.index('--work-dir') + 1], 'dets2d.json')
    triangulations = [c for c in commands if 'tools/triangulate.py' in c]
    outs = {c[c.index('--out') + 1]: c for c in triangulations}
    per_class = osp.join(str(tmp_path / 'work'), 'blades',
                         'triangulation_nms_per_class-val+k30', 'predictions.json')
    assert outs[per_class][outs[per_class].index('--dets2d') + 1] == nms_dets
    assert len(triangulations) == 3         # the config's detections, these, the exact boxes

    commands.clear()
    files.clear()
    _run_domain(tmp_path, monkeypatch, on_step=commands.append, files=files)
    assert set(METHODS) - set(files) == {'triangulation_nms_per_class', 'volume_head'}
    assert len([c for c in commands if 'tools/test.py' in c]) == 1
    assert len([c for c in commands if 'tools/triangulate.py' in c]) == 2

    commands.clear()
    _run_domain(tmp_path, monkeypatch, on_step=commands.append, classes=('solid', 'ggo'))
    assert len([c for c in commands if 'tools/test.py' in c]) == 2


def test_a_2d_stage_of_several_runs_chains_its_checkpoints(tmp_path, monkeypatch):
    """``--cycles-2d N`` trains the 2D stage N times, each run from the one before's
    last checkpoint (repository-relative), each in its own folder: the folder, and the
    overrides in their order, of one command with that ``load_from`` in
    ``--cfg-options-2d`` (which it replaces), before the 2D stage's own data root. MV2D
    loads the last run and is named after the last run's overrides. ``--amp-2d`` is the
    wrapper override, first, once."""
    bench = _benchmark_module()
    amp, seed = 'optim_wrapper.type=XrayAmpOptimWrapper', 'randomness.seed=1'
    monkeypatch.setattr(bench, 'REPO', str(tmp_path))
    _, _, trainings = _run_domain(tmp_path, monkeypatch, '--variant', 'r3', '--amp-2d',
                                  '--cycles-2d', '3', '--cfg-options-2d', seed)
    (dir_1, run_1), (dir_2, run_2), (dir_3, run_3), (dir_mv2d, mv2d) = trainings
    assert 'load_from' not in run_1 and run_1['randomness.seed'] == '1'
    assert run_1['optim_wrapper.type'] == run_3['optim_wrapper.type'] == 'XrayAmpOptimWrapper'
    assert run_2['load_from'] == osp.relpath(osp.join(dir_1, 'epoch_1.pth'), tmp_path)
    assert run_3['load_from'] == osp.relpath(osp.join(dir_2, 'epoch_1.pth'), tmp_path)
    assert run_2['load_from'].startswith('work' + osp.sep)
    assert mv2d['load_from'] == osp.join(dir_3, 'epoch_1.pth')
    assert len({dir_1, dir_2, dir_3}) == 3
    # the folders of one command per run
    for work_dir, cfg_options_2d in ((dir_1, [amp, seed]),
                                     (dir_3, [amp, seed, 'load_from=' + run_3['load_from']])):
        _, _, alone = _run_domain(tmp_path, monkeypatch, '--variant', 'r1',
                                  '--cfg-options-2d', *cfg_options_2d)
        assert alone[0][0] == work_dir
    assert osp.basename(dir_mv2d) == \
        bench.mv2d_folder([], [amp, seed, 'load_from=' + run_3['load_from']])
    # a given load_from starts the first run and is replaced in place later; the 2D
    # stage's own build stays last; --amp-2d stands first whatever the order given
    _, _, trainings = _run_domain(tmp_path, monkeypatch, '--variant', 'r2', '--amp-2d',
                                  '--cycles-2d', '2', '--train-nodules-2d', '5',
                                  '--cfg-options-2d', seed, 'load_from=a.pth', amp, 'x=1')
    (dir_1, run_1), (dir_2, run_2), _ = trainings
    assert run_1['load_from'] == 'a.pth'
    second = [amp, seed, 'load_from=' + run_2['load_from'], 'x=1',
              f"train_dataloader.dataset.data_root={tmp_path / 'bench'}-tn5/"]
    assert osp.basename(dir_2) == bench.training_folder('2d-stage', second)
    assert bench.stage_2d_options(['load_from=a', 'y=2', 'load_from=b'], None, False, 'c') \
        == ['y=2', 'load_from=c']


def test_the_bf16_2d_stage_keeps_the_folders_of_earlier_runs():
    """The README's commands of the bf16 24-epoch schedule (``--cfg-options-2d`` with
    the first run's checkpoint as ``load_from``) trained into these folders; the one
    command with ``--amp-2d --cycles-2d 2`` finds them, wherever the clone is."""
    bench = _benchmark_module()
    first = bench.stage_2d_options([], None, True)
    assert bench.training_folder('2d-stage', first) == \
        '2d-stage-optim_wrapper.type=XrayAmpOptimWrapper-e06ccb9b'
    checkpoint = osp.join(bench.REPO, 'work_dirs/benchmark/chest',
                          bench.training_folder('2d-stage', first), 'epoch_12.pth')
    second = bench.stage_2d_options([], None, True, bench.repo_path(checkpoint))
    assert bench.training_folder('2d-stage', second).endswith('-50860c86')
    assert bench.mv2d_folder([], second).endswith('-d8eba885')
    # outside the repository, and a sibling folder whose name starts with the root's
    assert bench.repo_path('/elsewhere/epoch_1.pth') == '/elsewhere/epoch_1.pth'
    assert bench.repo_path(bench.REPO + 'x/a.pth') == bench.REPO + 'x/a.pth'
    assert bench.repo_path(osp.join(bench.REPO, 'a', '..', 'b.pth')) == 'b.pth'


def test_more_2d_runs_or_amp_need_a_variant(tmp_path):
    """A 2D stage other than the configs' is a variant, so it never replaces the
    configs' entry of a split; a number of runs under 1 is refused."""
    for argv in (['--amp-2d'], ['--cycles-2d', '2']):
        out = run_tool('benchmark_detection.py', *argv, '--work-dir', str(tmp_path))
        assert out.returncode == 2
        assert '/ --amp-2d / --cycles-2d / --train-nodules-2d / --cross-fit-2d go' in out.stderr
    out = run_tool('benchmark_detection.py', '--variant', 'r0', '--cycles-2d', '0',
                   '--work-dir', str(tmp_path))
    assert out.returncode == 2 and '--cycles-2d must be at least 1, got 0' in out.stderr
    out = run_tool('benchmark_detection.py', '--variant', 'a', '--amp-2d', '--cfg-options-2d',
                   'optim_wrapper.type=OptimWrapper', '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert ('--amp-2d sets optim_wrapper.type=XrayAmpOptimWrapper; --cfg-options-2d names '
            'another: optim_wrapper.type=OptimWrapper') in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_amp_2d_without_bf16_stops_before_any_build(tmp_path, monkeypatch, capsys):
    """``--amp-2d`` where neither CUDA nor CPU bf16 kernels are: one line, exit 2,
    before the data builds (minutes) and any training."""
    import importlib

    import pytest
    import torch
    bench = _benchmark_module()
    engine = importlib.import_module('projects.mv2d_xray.mv2d_xray.engine.amp_optim_wrapper')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(engine, 'cpu_bf16_supported', lambda: False)
    monkeypatch.setattr(bench, 'run_step', lambda *a: pytest.fail('a step ran'))
    with pytest.raises(SystemExit) as exc:
        bench.main(['--domains', 'chest', '--variant', 'a', '--amp-2d', '--work-dir',
                    str(tmp_path / 'work')])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ('error: --amp-2d needs a CUDA device or a CPU with '
                                       'bf16 support; this machine has neither (train '
                                       'without --amp-2d)\n')
    assert list(tmp_path.iterdir()) == []


def test_a_quick_run_keeps_apart_from_the_full_one(tmp_path, monkeypatch):
    """``--quick`` builds, trains and reports apart: ``<domain>-quick`` and
    ``quick-<split>``, so a smoke run never meets a full run's trainings or entries."""
    bench = _benchmark_module()
    assert bench.report_key(bench.parse_args(['--quick'])) == 'quick-test'
    assert bench.report_key(bench.parse_args([])) == 'test'
    quick = str(tmp_path / 'work' / 'chest-quick')
    (tmp_path / 'work' / 'chest-quick' / 'data').mkdir(parents=True)
    write_fake_dataset(str(tmp_path / 'work' / 'chest-quick' / 'data'), cases=[],
                       classes=DOMAIN_CLASSES['chest'], split='val', prefix='chest_bench')
    _, builds, trainings = _run_domain(tmp_path, monkeypatch, '--quick')
    assert [b[0] for b in builds] == [osp.join(quick, 'data'), osp.join(quick, 'data-tn15')]
    assert all(t[0].startswith(quick + osp.sep) for t in trainings)
    assert all(t[1]['train_cfg.max_epochs'] == '1' for t in trainings)


def _benchmark_module():
    from conftest import import_from
    return import_from('tools', 'benchmark_detection')


def test_a_training_is_reused_only_with_the_same_training_settings(tmp_path, capsys):
    """The digest of a config's training settings ignores its test step and follows
    its ``_base_``; a finished training whose recorded settings differ from the config's
    now stops the run with one line (exit 2) instead of testing a stale model."""
    import pytest
    bench = _benchmark_module()
    base = tmp_path / 'base.py'
    base.write_text("model = dict(type='M', depth=18, test_cfg=dict(k=10))\n"
                    "train_cfg = dict(max_epochs=20)\ntest_cfg = dict(type='TestLoop')\n")
    config = tmp_path / 'config.py'
    config.write_text("_base_ = ['./base.py']\nwork_dir = 'a'\n")
    digest = bench.training_digest(str(config))
    config.write_text("_base_ = ['./base.py']\nwork_dir = 'b'\n"
                      "model = dict(test_cfg=dict(k=20))\n")          # test step only
    assert bench.training_digest(str(config)) == digest
    # overrides: those of the training data count, those of the test step do not
    test_only = ['test_dataloader.dataset.ann_file=x_infos_test.pkl', 'model.test_cfg.k=5',
                 'test_evaluator.ann_file=d/x_infos_test.pkl', 'val_cfg.type=ValLoop']
    assert bench.training_digest(str(config), test_only) == digest
    moved = ['train_dataloader.dataset.data_root=data/other/']
    assert bench.training_digest(str(config), moved) != digest
    assert bench.training_digest(str(config), ['randomness.seed=1']) != \
        bench.training_digest(str(config), ['randomness.seed=0'])
    assert bench.training_digest(str(config), ['model.test_cfgs=1']) != digest   # not a prefix
    base.write_text(base.read_text().replace('max_epochs=20', 'max_epochs=40'))
    assert bench.training_digest(str(config)) != digest                # via _base_
    # a finished training recorded with the first settings
    work_dir = tmp_path / 'mv2d'
    work_dir.mkdir()
    checkpoint = work_dir / 'epoch_20.pth'
    checkpoint.write_bytes(b'')
    (work_dir / 'last_checkpoint').write_text(str(checkpoint))
    (work_dir / 'benchmark_done').write_text(f'{checkpoint}\n{bench.DIGEST_PREFIX}{digest}\n')
    with pytest.raises(SystemExit) as stop:
        bench.train('mv2d', str(config), str(work_dir), [], [])
    assert stop.value.code == 2
    assert 'with other training settings' in capsys.readouterr().err
    base.write_text(base.read_text().replace('max_epochs=40', 'max_epochs=20'))
    assert bench.train('mv2d', str(config), str(work_dir), [], []) == str(checkpoint)
    with pytest.raises(SystemExit) as stop:                          # other training data
        bench.train('mv2d', str(config), str(work_dir), moved, [])
    assert stop.value.code == 2 and 'with other training settings' in capsys.readouterr().err
    assert bench.train('mv2d', str(config), str(work_dir), test_only, []) == str(checkpoint)
    # a marker from before digests were recorded is reused, with a note
    (work_dir / 'benchmark_done').write_text(f'{checkpoint}\n')
    assert bench.train('mv2d', str(config), str(work_dir), [], []) == str(checkpoint)
    assert 'its settings were not recorded' in capsys.readouterr().out


def test_an_empty_hook_list_trains_as_none(tmp_path):
    """A config that clears its base's ``custom_hooks`` (the chest 2D stage, of MV2D's
    EMAHook) has the digest of one that never had any: mmengine registers no hook for
    either, so its recorded trainings stay reusable; a hook itself changes the digest."""
    bench = _benchmark_module()
    plain = tmp_path / 'plain.py'
    plain.write_text("model = dict(type='M')\ntrain_cfg = dict(max_epochs=12)\n")
    base = tmp_path / 'base.py'
    base.write_text(plain.read_text() + "custom_hooks = [dict(type='EMAHook', momentum=0.002)]\n")
    cleared = tmp_path / 'cleared.py'
    cleared.write_text("_base_ = ['./base.py']\ncustom_hooks = []\n")
    assert bench.training_digest(str(cleared)) == bench.training_digest(str(plain))
    assert bench.training_digest(str(base)) != bench.training_digest(str(plain))
    assert bench.training_digest(str(base), ['custom_hooks.0.momentum=0.001']) != \
        bench.training_digest(str(base))


def _exact_predictions(infos: str) -> dict:
    """``{token: CasePred}``: every finding of ``infos`` at its own box and class, 0.9."""
    from projects.mv2d_xray.core.data_format import CasePred, load_gt_cases
    cases, _ = load_gt_cases(infos)
    return {t: CasePred(gt.boxes, [0.9] * len(gt.boxes), gt.labels) for t, gt in cases.items()}


def _scored(tmp_path, domain: str, data: dict, dets: list, preds_by_method: dict) -> dict:
    """Step 5 (``score_domain``) of ``domain`` on the fake build ``data`` with the 2D
    detections ``dets`` and each method's ``{token: CasePred}``, 10 resamples; the files
    go to a fresh folder under ``tmp_path``."""
    from projects.mv2d_xray.core.data_format import predictions_to_json
    from projects.mv2d_xray.core.io import write_json
    bench = _benchmark_module()
    root = tmp_path / f'scored-{len(list(tmp_path.glob("scored-*")))}'
    (root / 'work').mkdir(parents=True)
    files = dict(infos=data['infos'], coco=data['coco'], dets2d=str(root / 'dets2d.json'),
                 metrics_2d=str(root / 'm2d.json'))
    write_json(files['dets2d'], dets)
    write_json(files['metrics_2d'], {'overall': {'AP': 0.5}})
    for method, preds in preds_by_method.items():
        files[method] = str(root / f'{method}.json')
        write_json(files[method], predictions_to_json(preds))
    args = bench.parse_args(['--split', 'val', '--resamples', '10', '--work-dir',
                             str(root / 'work')])
    return bench.score_domain(domain, files, args)


def test_the_report_groups_the_findings_by_the_views_that_detect_them(tmp_path):
    """Step 5 on the evaluation fake set: the exact 2D boxes as the 2D detections, except
    every box of one finding; ``by_views_detected`` puts that finding in group '0' and the
    others in '3+' (10 views), and scores each method there."""
    from eval_fake_data import write_eval_dataset

    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import \
        coco_annotations_as_detections
    data = write_eval_dataset(str(tmp_path / 'data'))
    coco = read_json(data['coco'])
    lost = [a['id'] for a in coco['annotations']
            if a['image_id'] in {i['id'] for i in coco['images'] if i['token'] ==
                                 'evalfake-0000'} and a['instance_id'] == 1]
    assert len(lost) == 10
    kept = [a for a in coco['annotations'] if a['id'] not in lost]
    dets = coco_annotations_as_detections(dict(coco, annotations=kept), include_crowd=False)
    everything = _exact_predictions(data['infos'])
    entry = _scored(tmp_path, 'chest', data, dets, dict(mv2d=everything, triangulation={},
                                                      triangulation_gt2d=everything))
    groups = entry['by_views_detected']['groups']
    assert {g: block['findings'] for g, block in groups.items()} == \
        {'0': 1, '1': 0, '2': 0, '3+': 3}
    assert groups['0']['mv2d']['CPM'] == 1.0 and groups['3+']['mv2d']['CPM'] == 1.0
    assert groups['3+']['triangulation']['CPM'] == 0.0


def test_the_report_scores_the_methods_without_classes_too(tmp_path):
    """Step 5 with two classes: MV2D names every finding wrongly, triangulation rightly.
    Per class MV2D has CPM 0 and triangulation 1; without classes both have 1 and the
    paired difference is 0; a build of one class has no such block."""
    from eval_fake_data import write_eval_dataset

    from projects.mv2d_xray.core.data_format import CasePred
    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import \
        coco_annotations_as_detections
    from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import markdown_report
    data = write_eval_dataset(str(tmp_path / 'data'), classes=('pore', 'crack'))
    dets = coco_annotations_as_detections(read_json(data['coco']), include_crowd=False)
    right = _exact_predictions(data['infos'])
    assert all((p.labels == 0).all() for p in right.values())
    wrong = {t: CasePred(p.boxes, p.scores, 1 - p.labels) for t, p in right.items()}
    entry = _scored(tmp_path, 'blades', data, dets,
                    dict(mv2d=wrong, triangulation=right, triangulation_gt2d=right))
    assert entry['mv2d']['CPM'] == 0.0 and entry['triangulation']['CPM'] == 1.0
    agnostic = entry['class_agnostic']
    assert agnostic['mv2d']['CPM'] == 1.0 and agnostic['triangulation']['CPM'] == 1.0
    assert agnostic['mv2d_minus_triangulation']['CPM'] == 0.0
    assert agnostic['mv2d']['by_size']['>=1mm']['CPM'] == 1.0
    assert json.loads(json.dumps(agnostic)) == agnostic     # plain JSON for benchmark.json
    text = markdown_report(entry, list(entry['mv2d']['by_size']), 'blades, val split', 'val')
    assert 'Without classes' in text
    assert '| MV2D - triangulation (paired) | 0.000 [0.000, 0.000] |' in text
    # one class: nothing to add
    one = write_eval_dataset(str(tmp_path / 'one'))
    exact = _exact_predictions(one['infos'])
    one_dets = coco_annotations_as_detections(read_json(one['coco']), include_crowd=False)
    entry = _scored(tmp_path, 'chest', one, one_dets,
                    dict(mv2d=exact, triangulation=exact, triangulation_gt2d=exact))
    assert 'class_agnostic' not in entry
    text = markdown_report(entry, list(entry['mv2d']['by_size']), 'chest, val split', 'val')
    assert 'Without classes' not in text and '| mv2d ' in text


def test_the_report_pairs_mv2d_with_the_per_class_nms_baseline_too(tmp_path):
    """Step 5 with the per-class-NMS baseline's predictions: MV2D and that baseline find
    every finding, the config's triangulation none. Each paired difference, its table row
    and its verdict, and the method's column in the groups by detecting views."""
    from eval_fake_data import write_eval_dataset

    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import \
        coco_annotations_as_detections
    from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import markdown_report
    data = write_eval_dataset(str(tmp_path / 'data'), classes=('pore', 'crack'))
    dets = coco_annotations_as_detections(read_json(data['coco']), include_crowd=False)
    right = _exact_predictions(data['infos'])
    entry = _scored(tmp_path, 'blades', data, dets,
                    dict(mv2d=right, triangulation={}, triangulation_nms_per_class=right,
                         triangulation_gt2d=right))
    assert entry['triangulation']['CPM'] == 0.0
    assert entry['triangulation_nms_per_class']['CPM'] == 1.0
    assert entry['mv2d_minus_triangulation']['CPM'] == 1.0
    assert entry['mv2d_minus_triangulation_nms_per_class']['CPM'] == 0.0
    assert entry['mv2d_minus_triangulation_nms_per_class']['CPM_ci'] == [0.0, 0.0]
    assert entry['verdict']['winner'] == 'mv2d'
    assert entry['verdict']['nms_per_class']['winner'] == 'undecided'
    agnostic = entry['class_agnostic']
    assert agnostic['mv2d_minus_triangulation_nms_per_class']['CPM'] == 0.0
    groups = entry['by_views_detected']['groups']
    assert groups['3+']['triangulation_nms_per_class']['CPM'] == 1.0
    text = markdown_report(entry, list(entry['mv2d']['by_size']), 'blades, val split', 'val')
    assert '| MV2D - triangulation, NMS per class (paired) |    all | 0.000 [0.000, 0.000] |' \
        in text
    assert '| triangulation_nms_per_class ' in text


def test_cross_fitting_trains_a_2d_stage_per_fold_and_mv2d_on_their_detections(
        tmp_path, monkeypatch):
    """``--cross-fit-2d 2``: two 2D stages, each on one half of the training build's cases
    (complementary positions), each detecting on the half it did not train on, from its
    own checkpoint; MV2D loads the full 2D stage and takes its training queries from the
    two detection files, in a folder of its own; a second run reuses the detections."""
    bench = _benchmark_module()
    monkeypatch.setattr(bench, 'count_cases', lambda pkl: 7)
    tests = []

    def on_step(command):
        if 'tools/test.py' in command:
            tests.append(command)
            work_dir = command[command.index('--work-dir') + 1]
            os.makedirs(work_dir, exist_ok=True)
            with open(osp.join(work_dir, 'dets2d.json'), 'w') as f:
                f.write('[]')
    data, _, trainings = _run_domain(tmp_path, monkeypatch, '--variant', 'cf',
                                     '--cross-fit-2d', '2', on_step=on_step)
    (dir_2d, _), (dir_a, fold_a), (dir_b, fold_b), (dir_mv2d, mv2d) = trainings
    assert osp.basename(dir_2d) == '2d-stage'
    assert (osp.basename(dir_a), osp.basename(dir_b)) == ('2d-stage-fold1of2',
                                                          '2d-stage-fold2of2')
    assert fold_a['train_dataloader.dataset.indices'] == '[1,3,5]'
    assert fold_b['train_dataloader.dataset.indices'] == '[0,2,4,6]'
    assert fold_a['train_dataloader.dataset.data_root'] == data + '-tn15/'
    detect_a, detect_b = tests[:2]
    assert detect_a[3] == osp.join(dir_a, 'epoch_1.pth')
    assert detect_b[3] == osp.join(dir_b, 'epoch_1.pth')
    held_out = [dict(o.split('=', 1) for o in c[c.index('--cfg-options') + 1:])
                for c in (detect_a, detect_b)]
    assert [h['test_dataloader.dataset.indices'] for h in held_out] == ['[0,2,4,6]', '[1,3,5]']
    assert held_out[0]['test_dataloader.dataset.data_root'] == data + '-tn15/'
    assert held_out[0]['test_evaluator.ann_file'] == \
        data + '-tn15/chest_bench_infos_train.pkl'
    files = [osp.join(c[c.index('--work-dir') + 1], 'dets2d.json') for c in (detect_a,
                                                                            detect_b)]
    assert mv2d['model.train_cfg.detections_file'] == f'[{files[0]},{files[1]}]'
    assert mv2d['load_from'] == osp.join(dir_2d, 'epoch_1.pth')
    assert osp.basename(dir_mv2d) != 'mv2d'
    # the detections are made once per fold checkpoint
    _run_domain(tmp_path, monkeypatch, '--variant', 'cf', '--cross-fit-2d', '2',
                on_step=on_step)
    assert len(tests) == 3 + 1      # only MV2D's own test run again
    assert bench.fold_indices(5, 3, 1) == ([0, 2, 3], [1, 4])


def test_cross_fitting_is_refused_where_it_cannot_work(tmp_path):
    for argv, message in ((['--cross-fit-2d', '1'], '--cross-fit-2d must be at least 2'),
                          (['--cross-fit-2d', '2', '--cycles-2d', '2'], 'not with --cycles-2d'),
                          (['--cross-fit-2d', '2'], None)):
        out = run_tool('benchmark_detection.py', '--split', 'val', '--work-dir', str(tmp_path),
                       *([] if message is None else ['--variant', 'cf']), *argv)
        assert out.returncode == 2
        assert (message or '--cross-fit-2d go together') in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_volume_head_trains_on_mv2d_and_predicts_the_split(tmp_path, monkeypatch, capsys):
    """``--volume-head``: the head trains on MV2D's checkpoint with the domain's training
    build and settings (and ``--quick``'s one epoch after them), beside MV2D's folder, then
    predicts the split as ``volume_head``; a finished head is reused, one of another MV2D
    checkpoint or seed stops the run with one line naming its folder."""
    import pytest
    bench = _benchmark_module()
    commands, files = [], {}

    def on_step(command):
        if 'tools/volume_fusion.py' in command and 'train' in command:
            work_dir = command[command.index('--work-dir') + 1]
            os.makedirs(work_dir, exist_ok=True)
            open(osp.join(work_dir, 'volume_fusion.pth'), 'wb').close()
        commands.append(command)
    data, _, trainings = _run_domain(tmp_path, monkeypatch, '--volume-head', on_step=on_step,
                                     files=files)
    heads = [c for c in commands if 'tools/volume_fusion.py' in c]
    assert [c[c.index('tools/volume_fusion.py') + 1] for c in heads] == ['train', 'predict']
    train, predict = heads
    checkpoint = osp.join(trainings[1][0], 'epoch_1.pth')
    work = str(tmp_path / 'work' / 'chest')
    head_dir = osp.join(work, 'volume_head-mv2d')
    assert train[train.index('train') + 1:] == [
        bench.DOMAINS['chest'].config, checkpoint,
        '--infos', osp.join(data + '-tn15', 'chest_bench_infos_train.pkl'),
        '--work-dir', head_dir, '--voxel-mm', '4', '--sigma-min-mm', '2',
        '--crop-voxels', '24', '--epochs', '5', '--seed', '0']
    assert predict[predict.index('predict') + 1:] == [
        bench.DOMAINS['chest'].config, checkpoint, osp.join(head_dir, 'volume_fusion.pth'),
        '--infos', osp.join(data, 'chest_bench_infos_val.pkl'),
        '--out', osp.join(work, 'volume_head-val', 'predictions.json')]
    assert files['volume_head'] == predict[-1]

    # finished: reused, only the prediction runs again
    commands.clear()
    _run_domain(tmp_path, monkeypatch, '--volume-head', on_step=on_step)
    assert [c[c.index('tools/volume_fusion.py') + 1] for c in commands
            if 'tools/volume_fusion.py' in c] == ['predict']
    assert 'already trained' in capsys.readouterr().out
    # another seed, then a retrained MV2D (a new file at the same path): refused
    for argv in (['--seed', '1'], []):
        with pytest.raises(SystemExit) as stop:
            _run_domain(tmp_path, monkeypatch, '--volume-head', *argv, on_step=on_step)
        assert stop.value.code == 2
        assert f'{head_dir} holds a volume fusion head of another' in capsys.readouterr().err
        os.utime(checkpoint, ns=(1, 1))         # the second round: MV2D written anew

    # --quick: one epoch, the domain's settings before it
    (tmp_path / 'work' / 'chest-quick' / 'data').mkdir(parents=True)
    write_fake_dataset(str(tmp_path / 'work' / 'chest-quick' / 'data'), cases=[],
                       classes=DOMAIN_CLASSES['chest'], split='val', prefix='chest_bench')
    commands.clear()
    _run_domain(tmp_path, monkeypatch, '--volume-head', '--quick', on_step=on_step)
    train = next(c for c in commands if 'tools/volume_fusion.py' in c)
    assert train[-4:] == ['--epochs', '1', '--seed', '0']
    # without the flag: no head
    commands.clear()
    files.clear()
    _run_domain(tmp_path, monkeypatch, on_step=on_step, files=files)
    assert not [c for c in commands if 'tools/volume_fusion.py' in c]
    assert 'volume_head' not in files


def test_the_report_pairs_the_volume_head_with_triangulation_and_mv2d(tmp_path):
    """Step 6 with the head's predictions: the head finds every finding, MV2D and the
    triangulation none; its paired differences (+1 each), their verdicts and table rows."""
    from eval_fake_data import write_eval_dataset

    from projects.mv2d_xray.core.io import read_json
    from projects.mv2d_xray.mv2d_xray.baselines.triangulation import \
        coco_annotations_as_detections
    from projects.mv2d_xray.mv2d_xray.evaluation.benchmark_report import markdown_report
    data = write_eval_dataset(str(tmp_path / 'data'))
    dets = coco_annotations_as_detections(read_json(data['coco']), include_crowd=False)
    right = _exact_predictions(data['infos'])
    entry = _scored(tmp_path, 'chest', data, dets,
                    dict(mv2d={}, volume_head=right, triangulation={}, triangulation_gt2d=right))
    assert entry['volume_head']['CPM'] == 1.0 and entry['mv2d']['CPM'] == 0.0
    for key in ('volume_head_minus_triangulation', 'volume_head_minus_mv2d'):
        assert (entry[key]['CPM'], entry[key]['CPM_ci']) == (1.0, [1.0, 1.0])
    assert 'volume_head_minus_triangulation_nms_per_class' not in entry
    assert entry['verdict']['volume_head']['volume_head_minus_mv2d']['winner'] == 'volume_head'
    assert entry['by_views_detected']['groups']['3+']['volume_head']['CPM'] == 1.0
    text = markdown_report(entry, list(entry['mv2d']['by_size']), 'chest, val split', 'val')
    rows = [[cell.strip() for cell in line.strip('|').split('|')]
            for line in text.splitlines() if line.startswith('| volume head - ')]
    assert [row[:3] for row in rows if row[1] == 'all'] == [
        ['volume head - triangulation (paired)', 'all', '1.000 [1.000, 1.000]'],
        ['volume head - MV2D (paired)', 'all', '1.000 [1.000, 1.000]']]
