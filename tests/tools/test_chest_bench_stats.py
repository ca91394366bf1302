"""tools/chest_bench_stats.py: a chest benchmark folder's figures, on the tiny build."""
import re

from conftest import import_from

stats = import_from('tools', 'chest_bench_stats')


def test_split_figures_count_the_split_files(chest_bench_build, capsys):
    """Per split the cases, negative cases, findings by size band and ignore regions it
    prints are those of the split's info pickle, counted here directly."""
    root, _, splits = chest_bench_build
    assert stats.main([root]) == 0
    out = capsys.readouterr().out
    for split, infos in splits.items():
        instances = [inst for info in infos['data_list'] for inst in info['instances']]
        ignore = sum(bool(inst['ignore_flag']) for inst in instances)
        negatives = sum(not info['instances'] for info in infos['data_list'])
        line = next(line for line in out.splitlines() if line.startswith(f'{split:5s}:'))
        numbers = [int(n) for n in re.findall(r'(\d+) (?:cases|negative|findings|ignore)',
                                              line)]
        assert numbers == [len(infos['data_list']), negatives, len(instances) - ignore,
                           ignore]
    assert re.search(r'training images \(0\.\.255 scale, first 40 cases\): mean [\d.]+, '
                     r'std [\d.]+', out)
