"""Hostile and careless input to ``python -m data_converters`` (issue 13): every bad
input gives one line on stderr and exit status 2, and leaves the output folder untouched
(or complete); killing the converter leaves no worker process behind."""
import errno
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
from test_sources import define_tiny_source, registry  # noqa: F401 -- the fixture

from data_converters import checks, splits
from data_converters.__main__ import main
from data_converters.summary import invisible_findings
from projects.mv2d_xray.core.geometry import XrayGeometry

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TINY = ['--views', '2', '--pixel-spacing', '4', '--no-progress']


def run(argv):
    try:
        return main(argv)
    except SystemExit as stop:          # argparse
        return stop.code


def one_line_error(capsys, code, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def tree(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(osp.join(root, name), 'rb') as f:
                out[osp.relpath(osp.join(root, name), folder)] = f.read()
    return out


@pytest.mark.parametrize('flags, words', [
    (['--views', '1'], ['--views 1', 'at least 2 views']),
    (['--pixel-spacing', '1e-9'], ['detector sees only', '--pixel-spacing 1e-09']),
    (['--sod', '1'], ['--sod 1', 'inside the body']),
    (['--sdd', 'inf'], ['--sdd', 'a positive finite number']),
    (['--pixel-spacing', 'nan'], ['--pixel-spacing', 'a positive finite number']),
    (['--image-size', '100000'], ['--image-size 100000x100000', 'GiB']),
])
def test_degenerate_acquisitions_are_refused_before_writing(tmp_path, capsys, flags, words):
    out = tmp_path / 'out'
    code = run(['demo', '--out', str(out), '--cases', '2', '--no-progress'] + flags)
    one_line_error(capsys, code, *words)
    assert not out.exists()


def test_acquisition_rules():
    geo = XrayGeometry(num_views=4, image_size=(256, 256))       # 800 mm detector
    checks.check_acquisition(geo, 100.0, 150.0)
    assert checks.acquisition_warnings(geo, 3.0) == []            # 3 mm spans 1.9 px
    coarse = XrayGeometry(num_views=4, image_size=(16, 16))
    (line,) = checks.acquisition_warnings(coarse, 3.0)
    assert line.startswith('warning: a 3 mm finding at the isocentre spans 0.12 px')
    assert checks.render_memory_bytes(geo, 2) == 2 * (4 * 256 * 256 * 64 + 2 ** 30)
    with pytest.raises(checks.ConverterError, match='--workers 4 needs about'):
        checks.check_memory(geo, 4, available=2 ** 30)


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    code = run(['demo', '--out', str(blocker / 'sub'), '--cases', '2', '--no-progress'])
    one_line_error(capsys, code, 'cannot write')
    assert blocker.read_text() == 'x'


def test_other_split_settings_are_refused(registry, tmp_path, capsys):  # noqa: F811
    define_tiny_source()
    out = str(tmp_path / 'tiny')
    assert run(['tiny', '--out', out, '--cases', '3'] + TINY) == 0
    before = tree(out)
    capsys.readouterr()
    code = run(['tiny', '--out', out, '--cases', '3', '--val-fraction', '0.6'] + TINY)
    one_line_error(capsys, code, 'split with --val-fraction 0.2 (this run: --val-fraction 0.6)',
                   'merge --out')
    code = run(['tiny', '--out', out, '--cases', '3', '--seed', '3'] + TINY)
    one_line_error(capsys, code, '--seed 0 (this run: --seed 3)')
    assert tree(out) == before
    # merge re-splits the folder and records it: the same run is then accepted again
    assert run(['merge', '--out', out, '--val-fraction', '0.6']) == 0
    capsys.readouterr()
    assert run(['tiny', '--out', out, '--cases', '3', '--val-fraction', '0.6'] + TINY) == 0


@pytest.mark.parametrize('flags, empty', [
    (['--cases', '2', '--val-fraction', '1'], 'train'),
    (['--cases', '1', '--val-fraction', '0'], 'val'),
])
def test_empty_split_is_warned_about_before_converting(registry, tmp_path, capsys,  # noqa: F811
                                                       flags, empty):
    define_tiny_source()
    assert run(['tiny', '--out', str(tmp_path / 'o')] + flags + TINY) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if 'warning' in line]
    assert len(warnings) == 1 and f'the {empty} split will be empty' in warnings[0]
    assert f'warning: the {empty} split is empty' in captured.out


def test_disk_full_while_writing_cases(registry, tmp_path, capsys, monkeypatch):  # noqa: F811
    define_tiny_source()
    from data_converters import cases
    out = str(tmp_path / 'tiny')
    original, calls = cases.write_png, []

    def write_png(path, image):
        calls.append(path)
        if len(calls) > 2:                               # the 2nd case's first view
            raise OSError(errno.ENOSPC, 'No space left on device', path)
        original(path, image)

    monkeypatch.setattr(cases, 'write_png', write_png)
    code = run(['tiny', '--out', out, '--cases', '3'] + TINY)
    one_line_error(capsys, code, 'No space left on device', 'finished cases are kept')
    parts = sorted(os.listdir(osp.join(out, '.parts')))
    assert parts == ['settings.json', 'tiny-0.case.json']   # the finished case, no skips
    assert not [n for n in os.listdir(out) if n.startswith('tiny_infos')]
    monkeypatch.setattr(cases, 'write_png', original)
    assert run(['tiny', '--out', out, '--cases', '3'] + TINY) == 0
    assert '1 already done' in capsys.readouterr().out


def test_disk_full_while_writing_the_split_files(registry, tmp_path, capsys,  # noqa: F811
                                                 monkeypatch):
    define_tiny_source()
    out = str(tmp_path / 'tiny')
    assert run(['tiny', '--out', out, '--cases', '2'] + TINY) == 0
    capsys.readouterr()
    before = tree(out)
    original, opened = splits.atomic_output, []

    def atomic_output(path):
        opened.append(path)
        if len(opened) == 3:
            raise OSError(errno.ENOSPC, 'No space left on device', path)
        return original(path)

    monkeypatch.setattr(splits, 'atomic_output', atomic_output)
    code = run(['merge', '--out', out, '--val-fraction', '0'])
    one_line_error(capsys, code, 'No space left on device')
    assert tree(out) == before                 # the old set, whole; no temporaries


def test_merge_of_inputs_with_other_settings_copies_nothing(registry, tmp_path,  # noqa: F811
                                                            capsys):
    define_tiny_source()
    a, b, c = (str(tmp_path / n) for n in 'abc')
    assert run(['tiny', '--out', a, '--cases', '2', '--shard', '0/2'] + TINY) == 0
    assert run(['tiny', '--out', b, '--cases', '2', '--shard', '1/2', '--views', '3',
                '--pixel-spacing', '4', '--no-progress']) == 0
    capsys.readouterr()
    code = run(['merge', '--out', c, '--inputs', a, b])
    one_line_error(capsys, code, f'{b} was converted with other settings than {a}', 'geometry')
    assert not osp.exists(c)
    os.makedirs(osp.join(c, '.parts'))
    code = run(['merge', '--out', c, '--inputs', a, str(tmp_path / 'none')])
    one_line_error(capsys, code, 'holds no conversion')
    assert os.listdir(osp.join(c, '.parts')) == []


def test_invisible_findings():
    info = dict(token='t', instances=[dict(nodule_id='t/0'), dict(nodule_id='t/1')],
                cam_instances={'VIEW_00': [dict(instance_id=1)], 'VIEW_01': []})
    assert invisible_findings([info]) == ['t/0']
    # a finding whose only box its view flags (it does not show there) is not seen either
    info['cam_instances']['VIEW_01'] = [dict(instance_id=0, ignore_flag=1)]
    assert invisible_findings([info]) == ['t/0']
    info['cam_instances']['VIEW_01'][0]['ignore_flag'] = 0
    assert invisible_findings([info]) == []


# -- processes -----------------------------------------------------------------------------
def _children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != 'Z':
                found.append(int(name))
    return found


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_converter_leaves_no_worker(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'data_converters', 'demo', '--out', str(tmp_path / 'o'),
         '--workers', '2', '--cases', '6', '--views', '2', '--no-progress'],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and proc.poll() is None:
            # the spawn start method also starts a resource tracker: wait for 2 more
            workers = _children(proc.pid)
            if len(workers) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(workers) >= 3, 'no workers started'
        time.sleep(1.0)
        workers = _children(proc.pid)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], 'workers outlived the converter'
        if sig == signal.SIGTERM:
            assert code == 143, proc.stderr.read().decode()[-2000:]
        else:
            assert code == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
