"""``visualization/figures.py``: figures are written as PNG through the atomic writer."""
import os

import cv2
import pytest

from projects.mv2d_xray.mv2d_xray.visualization.figures import pyplot, save_png


def test_save_png_writes_a_png_in_a_new_folder(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    out = tmp_path / 'sub' / 'plot.png'
    save_png(fig, str(out), dpi=50)
    plt.close(fig)
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert cv2.imread(str(out)).shape[:2] == (50, 100)
    assert os.listdir(out.parent) == ['plot.png']            # no temporary file left


def test_save_png_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    class Broken:
        def savefig(self, path, **kwargs):
            with open(path, 'wb') as f:
                f.write(b'half a png')
            raise RuntimeError('disk full')

    out = tmp_path / 'plot.png'
    out.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='disk full'):
        save_png(Broken(), str(out))
    assert out.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['plot.png']
