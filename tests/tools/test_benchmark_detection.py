"""tools/benchmark_detection.py: bad arguments are one line (the full run is `make
benchmark`; its scoring is tested in tests/evaluation/test_benchmark_report.py)."""
from test_train_test import run_tool


def test_too_few_resamples_is_refused(tmp_path):
    out = run_tool('benchmark_detection.py', '--resamples', '5', '--work-dir', str(tmp_path))
    assert out.returncode == 2
    assert '--resamples must be at least 10' in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_domain_is_refused(tmp_path):
    out = run_tool('benchmark_detection.py', '--domains', 'lungs', '--work-dir', str(tmp_path))
    assert out.returncode == 2 and "invalid choice: 'lungs'" in out.stderr
