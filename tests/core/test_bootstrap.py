"""Case-bootstrap intervals against cases whose distribution is known by hand."""
import numpy as np
import pytest

from projects.mv2d_xray.core.bootstrap import bootstrap_metrics, format_interval, resample_tokens
from projects.mv2d_xray.core.data_format import CaseGT, CasePred

BOX = [0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 0.0]


def one_finding_cases(num: int):
    """``num`` scans with one 8 mm finding at the origin each."""
    return {f'c{i:02d}': CaseGT([BOX], [0], [False], [8.0]) for i in range(num)}


def finding(tokens):
    """Predictions that hit the finding of each of ``tokens`` (and nothing else)."""
    return {t: CasePred([BOX], [0.9], [0]) for t in tokens}


def test_resamples_are_seeded_and_in_range():
    a, b = resample_tokens(['x', 'y', 'z'], 50, 3), resample_tokens(['x', 'y', 'z'], 50, 3)
    assert a.shape == (50, 3) and np.array_equal(a, b) and a.min() >= 0 and a.max() <= 2


def test_a_method_that_finds_everything_has_a_zero_width_interval():
    cases = one_finding_cases(10)
    out = bootstrap_metrics(cases, {'m': finding(cases)}, ['nodule'], num_resamples=50)
    cpm = out['methods']['m']['intervals']['CPM']
    assert cpm['value'] == 1.0 and cpm['ci'] == [1.0, 1.0] and cpm['n'] == 50


def test_half_found_matches_the_binomial_interval():
    # sensitivity = fraction of found cases, no false positives: CPM = sensitivity, and
    # its bootstrap distribution is Binomial(40, 0.5) / 40 (95 %: about 0.5 +- 0.155)
    cases = one_finding_cases(40)
    out = bootstrap_metrics(cases, {'m': finding(sorted(cases)[:20])}, ['nodule'],
                            num_resamples=400, seed=1)
    cpm = out['methods']['m']['intervals']['CPM']
    assert cpm['value'] == 0.5
    low, high = cpm['ci']
    assert 0.3 <= low <= 0.4 and 0.6 <= high <= 0.7
    assert out['settings']['num_cases'] == 40


def test_paired_difference_is_tighter_than_the_separate_intervals():
    # a finds cases 0-29, b finds 0-19: a - b = (draws among cases 20-29) / 40 >= 0
    cases = one_finding_cases(40)
    tokens = sorted(cases)
    out = bootstrap_metrics(cases, {'a': finding(tokens[:30]), 'b': finding(tokens[:20])},
                            ['nodule'], pairs=[('a', 'b')], num_resamples=400)
    diff = out['differences']['a - b']['CPM']
    assert diff['value'] == pytest.approx(0.25)
    assert diff['ci'][0] > 0.1               # excludes 0: the difference is real
    a_ci = out['methods']['a']['intervals']['CPM']['ci']
    b_ci = out['methods']['b']['intervals']['CPM']['ci']
    # narrower than comparing the two separate intervals (independent samples would give
    # a width of about the root of the sum of squares)
    unpaired = np.hypot(a_ci[1] - a_ci[0], b_ci[1] - b_ci[0])
    assert diff['ci'][1] - diff['ci'][0] < 0.8 * unpaired
    same = bootstrap_metrics(cases, {'a': finding(tokens[:30]), 'b': finding(tokens[:30])},
                             ['nodule'], pairs=[('a', 'b')], num_resamples=50)
    assert same['differences']['a - b']['CPM']['ci'] == [0.0, 0.0]


def test_pooled_pairs_average_their_differences_resample_by_resample():
    """With one finding per scan and no false positives, CPM is the share of the drawn
    scans whose finding is found, so each resample's differences are counts by hand: the
    pooled interval of two different pairs is the percentile interval of their mean,
    resample by resample (not the mean of the pairs' intervals); two copies of one pair
    pool to that pair."""
    cases = one_finding_cases(40)
    tokens = sorted(cases)
    found = dict(a=range(0, 30), b=range(0, 20), c=range(10, 36), d=range(4, 16))
    preds = {m: finding([tokens[i] for i in idx]) for m, idx in found.items()}
    out = bootstrap_metrics(cases, preds, ['nodule'], pairs=[('a', 'b'), ('c', 'd')],
                            pooled=dict(mean=[('a', 'b'), ('c', 'd')],
                                        twice=[('a', 'b'), ('a', 'b')]),
                            num_resamples=300, seed=3)
    draws = resample_tokens(tokens, 300, 3)
    share = {m: np.isin(draws, list(idx)).mean(axis=1) for m, idx in found.items()}
    by_hand = ((share['a'] - share['b']) + (share['c'] - share['d'])) / 2
    pooled = out['pooled']['mean']['CPM']
    assert pooled['value'] == pytest.approx(((30 - 20) + (26 - 12)) / 40 / 2)
    assert pooled['ci'] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])))
    ab, cd = (out['differences'][k]['CPM']['ci'] for k in ('a - b', 'c - d'))
    assert pooled['ci'] != pytest.approx([(ab[0] + cd[0]) / 2, (ab[1] + cd[1]) / 2])
    twice = out['pooled']['twice']['CPM']
    assert twice['value'] == pytest.approx(0.25) and twice['ci'] == pytest.approx(ab)
    assert pooled['n'] == 300 and set(out['pooled']['mean']) >= {'CPM', 'FROC@1'}
    assert bootstrap_metrics(cases, preds, ['nodule'], num_resamples=2)['pooled'] == {}
    with pytest.raises(KeyError, match="no predictions for method 'z'"):
        bootstrap_metrics(cases, preds, ['nodule'], pooled=dict(m=[('a', 'z')]),
                          num_resamples=2)
    with pytest.raises(ValueError, match="pooled 'm': no pairs"):
        bootstrap_metrics(cases, preds, ['nodule'], pooled=dict(m=[]), num_resamples=2)


def test_band_without_findings_in_a_resample_is_left_out():
    cases = one_finding_cases(6)
    cases['small'] = CaseGT([BOX[:3] + [4.0, 4.0, 4.0, 0.0]], [0], [False], [4.0])
    out = bootstrap_metrics(cases, {'m': finding(cases)}, ['nodule'], num_resamples=200)
    band = out['methods']['m']['intervals']['CPM_3-6mm']
    # the 4 mm case is drawn in 1 - (6/7)^7 = 66 % of the resamples
    assert 100 < band['n'] < 170 and band['ci'] == [1.0, 1.0]


def test_unknown_pair_and_no_cases_are_refused():
    with pytest.raises(KeyError, match="no predictions for method 'c'"):
        bootstrap_metrics(one_finding_cases(2), {'a': {}}, ['nodule'], pairs=[('a', 'c')],
                          num_resamples=2)
    with pytest.raises(ValueError, match='no cases'):
        bootstrap_metrics({}, {'a': {}}, ['nodule'])


def test_format_interval():
    assert format_interval(dict(value=0.5, ci=[0.25, 0.75], n=9)) == '0.500 [0.250, 0.750]'
    assert format_interval(None) == '-'


def test_memoised_evaluation_equals_the_plain_one():
    from projects.mv2d_xray.core.metric import evaluate_detections
    rng = np.random.default_rng(4)
    cases, preds = {}, {}
    for i in range(12):
        num = int(rng.integers(0, 3))
        centres = rng.uniform(-20, 20, (num, 3))
        diam = rng.uniform(3, 14, num)
        cases[f'c{i}'] = CaseGT(np.c_[centres, diam, diam, diam, np.zeros(num)],
                                np.zeros(num), np.zeros(num, bool), diam)
        guess = np.r_[centres + rng.normal(0, 1.5, centres.shape),
                      rng.uniform(-20, 20, (2, 3))]
        preds[f'c{i}'] = CasePred(np.c_[guess, np.full((len(guess), 3), 6.0),
                                        np.zeros(len(guess))],
                                  rng.uniform(0, 1, len(guess)), np.zeros(len(guess)))
    memo = {}
    plain = evaluate_detections(cases, preds, ['nodule'])
    evaluate_detections(cases, preds, ['nodule'], memo=memo)
    assert memo
    assert evaluate_detections(cases, preds, ['nodule'], memo=memo) == plain


def test_all_figures_lists_every_band_figure():
    from projects.mv2d_xray.core.bootstrap import all_figures
    from projects.mv2d_xray.core.metric import evaluate_detections
    cases = one_finding_cases(3)
    flat = all_figures(evaluate_detections(cases, finding(['c00']), ['nodule']))
    assert flat['CPM'] == pytest.approx(1 / 3) and flat['CPM_6-10mm'] == pytest.approx(1 / 3)
    assert flat['FROC@0.125_6-10mm'] == pytest.approx(1 / 3)
    assert flat['AP_dist@2mm_6-10mm'] == pytest.approx(1 / 3, abs=0.01)
    assert flat['centre_error_mm_6-10mm'] == 0.0
    assert not any(key.endswith('_3-6mm') for key in flat)     # no finding in that band
