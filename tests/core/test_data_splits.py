from collections import Counter

from core.data.splits import split_rows


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
