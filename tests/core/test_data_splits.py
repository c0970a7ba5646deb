from collections import Counter

import pytest

from core.data.splits import kfold_rows, split_rows
from core.errors import QuantTuneError


def test_parts_cover_every_row_once_and_follow_the_ratios():
    split = split_rows(100, seed=3, validation_ratio=0.1, test_ratio=0.2)
    rows = split.train + split.validation + split.test
    assert sorted(rows) == list(range(100))
    assert (len(split.train), len(split.validation), len(split.test)) == (70, 10, 20)


def test_same_seed_same_split_other_seed_other_split():
    assert split_rows(50, seed=1, test_ratio=0.2) == split_rows(50, seed=1, test_ratio=0.2)
    assert split_rows(50, seed=1, test_ratio=0.2).test != split_rows(50, seed=2, test_ratio=0.2).test


def test_stratified_keeps_each_labels_share_in_every_part():
    labels = ["a"] * 80 + ["b"] * 20
    split = split_rows(100, seed=0, validation_ratio=0.1, test_ratio=0.2, labels=labels)
    assert sorted(split.train + split.validation + split.test) == list(range(100))
    assert Counter(labels[i] for i in split.test) == {"a": 16, "b": 4}
    assert Counter(labels[i] for i in split.validation) == {"a": 8, "b": 2}


def test_a_rare_label_still_reaches_validation_and_test():
    labels = ["common"] * 40 + ["rare"] * 3
    split = split_rows(43, seed=0, validation_ratio=0.1, test_ratio=0.1, labels=labels)
    assert "rare" in {labels[i] for i in split.test}
    assert "rare" in {labels[i] for i in split.validation}
    assert "rare" in {labels[i] for i in split.train}


def test_no_validation_or_test_when_ratios_are_zero():
    split = split_rows(10, seed=0, validation_ratio=0.0, test_ratio=0.0)
    assert split.validation == [] and split.test == [] and sorted(split.train) == list(range(10))


# -- k-fold ----------------------------------------------------------------------------------------
def check_folds(folds, n, k):
    assert len(folds) == k
    tested = sorted(row for _train, test in folds for row in test)
    assert tested == list(range(n))  # every row in exactly one test fold
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(train + test) == list(range(n))
    sizes = [len(test) for _train, test in folds]
    assert max(sizes) - min(sizes) <= 1, sizes


@pytest.mark.parametrize(("n", "k"), [(23, 5), (10, 10), (7, 2)])
def test_kfold_tests_every_row_once_in_folds_of_equal_size(n, k):
    check_folds(kfold_rows(n, k, seed=4), n, k)


def test_stratified_kfold_keeps_each_labels_share_in_every_fold():
    labels = ["a"] * 23 + ["b"] * 11 + ["c"] * 6
    folds = kfold_rows(40, 5, seed=1, labels=labels)
    check_folds(folds, 40, 5)
    overall = Counter(labels)
    for _train, test in folds:
        counts = Counter(labels[i] for i in test)
        for label, total in overall.items():
            assert abs(counts[label] - len(test) * total / 40) <= 1, (label, counts)


def test_kfold_same_seed_same_folds_other_seed_other_folds():
    labels = ["x", "y"] * 15
    assert kfold_rows(30, 3, seed=2) == kfold_rows(30, 3, seed=2)
    assert kfold_rows(30, 3, seed=2, labels=labels) == kfold_rows(30, 3, seed=2, labels=labels)
    assert kfold_rows(30, 3, seed=2) != kfold_rows(30, 3, seed=3)
    assert kfold_rows(30, 3, seed=2, labels=labels) != kfold_rows(30, 3, seed=3, labels=labels)


def test_kfold_refuses_too_few_folds_or_rows_and_names_the_fix():
    with pytest.raises(QuantTuneError, match="at least 2 folds") as error:
        kfold_rows(10, 1)
    assert "2 folds or more" in error.value.fix
    with pytest.raises(QuantTuneError, match="5 folds need at least 5 rows; the data has 4") as error:
        kfold_rows(4, 5)
    assert "at most 4 folds" in error.value.fix


def test_stratified_kfold_names_the_label_with_too_few_rows():
    labels = ["common"] * 20 + ["rare"] * 3
    with pytest.raises(QuantTuneError, match="'rare' has 3 row") as error:
        kfold_rows(23, 5, labels=labels)
    assert "at most 3 folds" in error.value.fix and "add rows of 'rare'" in error.value.fix
    check_folds(kfold_rows(23, 3, labels=labels), 23, 3)  # the fix works
