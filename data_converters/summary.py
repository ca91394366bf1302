"""What a run did and what the dataset holds: :class:`RunReport` and the printed summary."""
from __future__ import annotations

import os.path as osp
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from data_converters.splits import SPLITS, split_file_paths
from data_converters.storage import CaseStore


@dataclass
class RunReport:
    """What a run did (printed by :func:`print_summary`)."""
    prefix: str                                      # the split files' prefix
    converted: List[str] = field(default_factory=list)
    already_done: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    lists: Optional[Dict[str, List[dict]]] = None   # the split lists, when assembled


def summarize(out_dir: str, lists: Optional[Dict[str, List[dict]]] = None) -> dict:
    """Counts over the dataset (from the split lists, or the finished cases)."""
    store = CaseStore(out_dir)
    infos, skipped = store.load()
    if lists is None:
        lists = {'all': infos}
    counts = {}
    for name, data_list in lists.items():
        instances = [inst for info in data_list for inst in info['instances']]
        counts[name] = dict(
            cases=len(data_list),
            nodules=sum(1 for inst in instances if not inst['ignore_flag']),
            ignore_regions=sum(1 for inst in instances if inst['ignore_flag']),
            negative_cases=sum(1 for info in data_list
                               if not any(not i['ignore_flag'] for i in info['instances'])))
    return dict(splits=counts, skipped=skipped)


def store_infos(out_dir: str) -> List[dict]:
    return CaseStore(out_dir).load()[0]


def invisible_findings(data_list: List[dict]) -> List[str]:
    """The ``nodule_id`` of every finding that has no 2D box in any view (outside every
    view's detector, or not in front of the source), or only boxes its views flag
    ``ignore_flag`` (views that do not show it)."""
    hidden = []
    for info in data_list:
        seen = {inst['instance_id'] for boxes in info.get('cam_instances', {}).values()
                for inst in boxes if not inst.get('ignore_flag', 0)}
        hidden += [inst.get('nodule_id', f'{info["token"]}/{idx}')
                   for idx, inst in enumerate(info['instances']) if idx not in seen]
    return hidden


def invisible_findings_lines(lists: Dict[str, List[dict]], show: int = 5) -> List[str]:
    """One warning line when findings have no 2D box in any view."""
    hidden = [n for data_list in lists.values() for n in invisible_findings(data_list)]
    if not hidden:
        return []
    more = f', ... ({len(hidden) - show} more)' if len(hidden) > show else ''
    return [f'  warning: {len(hidden)} finding(s) have no 2D box in any view (outside '
            f'every detector): {", ".join(hidden[:show])}{more}']


def print_summary(out_dir: str, report: RunReport, file=None) -> None:
    """Print what the run did and what the dataset holds."""
    file = file or sys.stdout
    lists = report.lists
    summary = summarize(out_dir, lists)
    print(f'converted {len(report.converted)} case(s) in {report.seconds:.1f} s, '
          f'{len(report.already_done)} already done, {len(report.skipped)} skipped '
          'in this run', file=file)
    for name, c in summary['splits'].items():
        print(f'  {name:5s}: {c["cases"]} cases, {c["nodules"]} nodules, '
              f'{c["ignore_regions"]} ignore regions, {c["negative_cases"]} negative cases',
              file=file)
    if summary['skipped']:
        print(f'  skipped cases ({len(summary["skipped"])}):', file=file)
        for token, reason in sorted(summary['skipped'].items()):
            print(f'    {token}: {reason}', file=file)
    for line in invisible_findings_lines(lists if lists is not None else
                                         {'all': store_infos(out_dir)}):
        print(line, file=file)
    if lists is not None:
        names = tuple(lists) or SPLITS
        for name in names:
            if not lists.get(name):
                print(f'  warning: the {name} split is empty', file=file)
        paths = split_file_paths(out_dir, report.prefix, names)
        for name in names:
            print(f'  wrote {paths[name]["pkl"]} and {osp.basename(paths[name]["coco"])}',
                  file=file)
