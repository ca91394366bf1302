"""Dataset converters: CT + annotations -> multi-view DRRs, info pickles and COCO JSON.

Run ``python -m data_converters --help``.
"""
