"""Value types of the command-line flags (argparse ``type=``), shared by the CLI's common
flags and the sources' own ones (:meth:`ConversionSource.add_arguments
<data_converters.sources.base.ConversionSource.add_arguments>`).

A bad value becomes one line on stderr, e.g. ``argument --views: expected a positive
integer, got 0``, and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Callable, Tuple


def number_type(kind: Callable[[str], float], accept: Callable[[float], bool],
                expected: str, name: str) -> Callable[[str], float]:
    """An argparse type: parse ``text`` with ``kind`` (``int`` or ``float``) and keep the
    values ``accept`` allows (NaN fails every comparison, so it is refused).

    Args:
        kind (callable): the parser, ``int`` or ``float``.
        accept (callable): ``value -> bool``.
        expected (str): what is expected, for the message (``'a positive integer'``).
        name (str): the type's name (argparse shows it in some messages).
    """
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}') from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f'expected {expected}, got {value}')
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = number_type(int, lambda v: v >= 1, 'a positive integer', 'positive_int')
non_negative_int = number_type(int, lambda v: v >= 0, 'an integer >= 0', 'non_negative_int')
positive_float = number_type(float, lambda v: 0 < v < math.inf, 'a positive finite number',
                             'positive_float')
fraction = number_type(float, lambda v: 0.0 <= v <= 1.0, 'a number in [0, 1]', 'fraction')


def image_size(text: str) -> Tuple[int, int]:
    """``SIZE`` or ``HxW`` in pixels (> 0) -> ``(H, W)``."""
    match = re.fullmatch(r'(\d+)(?:x(\d+))?', text.strip())
    if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
        raise argparse.ArgumentTypeError(f'expected SIZE or HxW in pixels (> 0), got {text!r}')
    height = int(match.group(1))
    return (height, int(match.group(2)) if match.group(2) else height)


#: A prefix of the split files' names: a plain name, no folder (nothing outside ``--out``).
FILE_PREFIX = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]*')


def file_prefix(text: str) -> str:
    """A prefix of file names in the output folder (letters, digits, ``_``, ``-`` and
    ``.``, not first): ``--prefix ../x`` or ``/tmp/x`` would write outside ``--out``."""
    if not FILE_PREFIX.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f'expected a file name prefix (letters, digits, _ - and ., no folder), got {text!r}')
    return text


def shard(text: str) -> Tuple[int, int]:
    """``I/N`` with ``0 <= I < N`` -> ``(I, N)``."""
    match = re.fullmatch(r'(\d+)/(\d+)', text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f'expected I/N (0 <= I < N), got {text!r}')
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f'expected I/N with 0 <= I < N, got {text!r}')
    return index, count
