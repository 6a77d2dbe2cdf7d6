"""avg@k and pass@k on hand-made grades."""

import itertools
import math

import pytest

from sftrl.evaluate import avg_at_k, pass_at_k


def brute_force_pass_at_k(grades, k):
    subsets = list(itertools.combinations(grades, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("grades", [[1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0, 1, 0, 0]])
def test_pass_at_k_is_the_chance_that_k_of_the_samples_contain_a_correct_one(grades):
    for k in range(1, len(grades) + 1):
        assert pass_at_k(len(grades), sum(grades), k) == pytest.approx(brute_force_pass_at_k(grades, k))


def test_pass_at_k_known_values_and_errors():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(32, 2, 8) == pytest.approx(1 - math.comb(30, 8) / math.comb(32, 8))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_at_k():
    assert avg_at_k([1, 0, 0, 1]) == 0.5
    assert avg_at_k([0.0] * 32) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])
