"""The Evaluate step's metrics against values worked out by hand on small fixed inputs."""

from __future__ import annotations

import math

import pytest

from core.evaluate import metrics, wordnet
from core.evaluate.metrics import (
    METRICS,
    TASK_METRICS,
    classification_scores,
    diversity_scores,
    exact_match,
    format_value,
    generation_scores,
    is_wrong,
    qa_scores,
    score_outputs,
    token_f1,
)


class _Lemma:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class _Synset:
    def __init__(self, names: list[str]) -> None:
        self._lemmas = [_Lemma(n) for n in names]

    def lemmas(self) -> list[_Lemma]:
        return self._lemmas


class StandInWordNet:
    """The one call METEOR makes of WordNet, synsets(word), over a hand-written synonym table."""

    def __init__(self, synonyms: dict[str, list[str]]) -> None:
        self.synonyms = synonyms

    def synsets(self, word: str) -> list[_Synset]:
        return [_Synset(self.synonyms[word])] if word in self.synonyms else []


NO_SYNONYMS = StandInWordNet({})


# ---- the registry --------------------------------------------------------------------------------


def test_every_task_metric_is_registered_and_explained():
    assert TASK_METRICS["classification"] == (
        "accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro",
    )  # fmt: skip
    assert TASK_METRICS["text"] == ("perplexity", "distinct_1", "distinct_2", "repetition_rate")
    from core.evaluate.job import metrics_of

    shown = {key for task in TASK_METRICS for key in metrics_of(task)}  # the Evaluate table's columns
    assert shown == set(METRICS)  # every metric is shown somewhere, and nothing unregistered is
    assert metrics_of("qa")[-1] == "text_perplexity" and "text_perplexity" not in metrics_of("classification")
    for key, metric in METRICS.items():
        assert metric.key == key and metric.title and len(metric.hover) > 40
        assert metric.scale in ("fraction", "percent", "ratio")
    lower_is_better = {k for k, m in METRICS.items() if not m.higher_is_better}
    assert lower_is_better == {"perplexity", "text_perplexity", "repetition_rate"}
    assert METRICS["bleu"].scale == METRICS["chrf"].scale == "percent"


def test_format_value():
    assert format_value("accuracy", 5 / 6) == "83.3 %"
    assert format_value("bleu", 27.4123) == "27.41"  # sacrebleu's 0-100 scale, shown as is
    assert format_value("chrf", 100.0) == "100.00"
    assert format_value("perplexity", 12.34) == "12.3"
    assert format_value("perplexity", math.inf) == "∞"
    assert format_value("rougeL", None) == "—"
    assert format_value("meteor", math.nan) == "—"


# ---- classification ------------------------------------------------------------------------------


def test_classification_scores_by_hand():
    # true a a b b, predicted a b b b. Accuracy 3/4.
    # a: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3.   b: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5.
    # Macro: P (1 + 2/3)/2 = 5/6, R (1/2 + 1)/2 = 3/4, F1 (2/3 + 4/5)/2 = 11/15. Micro F1 = 3/4.
    scores, confusion = classification_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    expected = {"accuracy": 0.75, "precision_macro": 5 / 6, "recall_macro": 0.75, "f1_macro": 11 / 15}
    assert scores == pytest.approx({**expected, "f1_micro": 0.75})
    assert confusion == [[1, 1], [0, 2]]  # rows: true a, true b; columns: predicted a, predicted b


def test_a_prediction_outside_the_labels_counts_as_wrong():
    # true a b b, predicted a "maybe" b. Accuracy 2/3.
    # a: P 1, R 1, F1 1.   b: TP 1, FP 0, FN 1 ("maybe" is a miss) -> P 1, R 1/2, F1 2/3.
    # Macro: P 1, R 3/4, F1 5/6. Micro over every value seen: 2 right of 3 -> 2/3, as accuracy.
    refs, preds = ["a", "b", "b"], ["a", "maybe", "b"]
    scores, confusion = classification_scores(refs, preds, ["a", "b"])
    expected = {"accuracy": 2 / 3, "precision_macro": 1.0, "recall_macro": 0.75, "f1_macro": 5 / 6}
    assert scores == pytest.approx({**expected, "f1_micro": 2 / 3})
    assert confusion == [[1, 0], [0, 1]]  # "maybe" sits in no column
    _, per_example, _, extras = score_outputs("classification", refs, preds, labels=["a", "b"])
    assert extras == {"confusion": [[1, 0], [0, 1]], "outside_labels": 1}
    assert [e["exact_match"] for e in per_example] == [1.0, 0.0, 1.0]
    assert [is_wrong("classification", e) for e in per_example] == [False, True, False]


def test_classification_compares_labels_exactly_apart_from_surrounding_spaces():
    scores, _ = classification_scores(["billing", "bug"], [" billing\n", "Bug"], ["billing", "bug"])
    assert scores["accuracy"] == 0.5  # "Bug" is not the label "bug"


def test_no_examples_give_no_scores_not_errors():
    scores, confusion = classification_scores([], [], ["a", "b"])
    assert scores == dict.fromkeys(TASK_METRICS["classification"]) and confusion == [[0, 0], [0, 0]]
    for task in TASK_METRICS:
        corpus, per_example, _, _ = score_outputs(task, [], [], labels=["a"], wordnet=NO_SYNONYMS)
        assert per_example == [] and all(v is None for v in corpus.values())


# ---- question answering --------------------------------------------------------------------------


def test_squad_normalisation_exact_match_and_token_f1():
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("cat sat", "The Cat sat!") == 1.0
    assert exact_match("cat sat", "cat sat down") == 0.0
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]: 2 shared words.
    # Precision 2/2, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8.
    assert token_f1("a cat sat down", "the cat sat") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("mars", "") == 0.0 and token_f1("mars", "venus") == 0.0


def test_qa_takes_the_best_of_several_accepted_answers():
    # Example 1: "Red planet!" matches the second accepted answer exactly -> EM 1, F1 1.
    # Example 2: "the cat sat" vs "a cat sat down" -> EM 0, F1 0.8 (as above).
    refs = [["Mars", "the red planet"], "a cat sat down"]
    preds = ["Red planet!", "the cat sat"]
    assert qa_scores(refs, preds) == pytest.approx({"exact_match": 0.5, "token_f1": 0.9})
    corpus, per_example, unavailable, _ = score_outputs("qa", refs, preds)
    assert list(corpus) == ["exact_match", "token_f1", "rougeL"]  # perplexity is the model's
    assert per_example == [{"exact_match": 1.0, "token_f1": 1.0}, {"exact_match": 0.0, "token_f1": 0.8}]
    assert [is_wrong("qa", e) for e in per_example] == [False, True] and not unavailable


# ---- generation against references ---------------------------------------------------------------


def test_bleu_exact_and_partial_by_hand():
    exact, _ = generation_scores(["the cat sat on the mat"], ["the cat sat on the mat"], wordnet=NO_SYNONYMS)
    assert exact["bleu"] == pytest.approx(100.0)
    # hyp "the cat sat on the mat" (6 words), ref "the cat sat on the red mat" (7 words).
    # Matched n-grams: 1-grams 6/6, 2-grams 4/5, 3-grams 3/4, 4-grams 2/3 ("the mat" & co. miss).
    # Brevity penalty exp(1 - 7/6). BLEU = 100 * exp(-1/6) * (1 * 4/5 * 3/4 * 2/3) ** (1/4) = 67.32.
    ref, hyp = "the cat sat on the red mat", "the cat sat on the mat"
    partial, _ = generation_scores([ref], [hyp], wordnet=NO_SYNONYMS)
    assert partial["bleu"] == pytest.approx(100 * math.exp(-1 / 6) * 0.4**0.25)
    assert partial["bleu"] == pytest.approx(67.32, abs=0.01)


def test_bleu_with_several_references_per_example():
    refs = [["something else entirely", "the cat sat on the mat"], "a dog ran in the park"]
    preds = ["the cat sat on the mat", "a dog ran in the park"]
    scores, _ = generation_scores(refs, preds, wordnet=NO_SYNONYMS)
    assert scores["bleu"] == pytest.approx(100.0)  # each output equals one of its references


def test_bleu_of_a_corpus_without_four_word_sequences_is_zero():
    # sacrebleu's documented default: corpus BLEU multiplies the 1- to 4-gram precisions, and a
    # corpus with no 4-gram at all has none to match, so even a perfect copy scores 0.
    scores, _ = generation_scores(["the cat sat"], ["the cat sat"], wordnet=NO_SYNONYMS)
    assert scores["bleu"] == 0.0 and scores["chrf"] == pytest.approx(100.0)


def test_chrf_by_hand():
    # Characters of "cat" vs "car" (chrF: up to 6-grams, beta 2, no word n-grams):
    # 1-grams {c,a,t} vs {c,a,r}: 2 of 3 both ways; 2-grams {ca,at} vs {ca,ar}: 1 of 2;
    # 3-grams {cat} vs {car}: 0 of 1; no 4- to 6-grams on either side, so 3 orders count.
    # Mean precision = mean recall = (2/3 + 1/2 + 0) / 3 = 7/18; F(beta=2) of equal P and R is 7/18.
    scores, _ = generation_scores(["car"], ["cat"], wordnet=NO_SYNONYMS)
    assert scores["chrf"] == pytest.approx(100 * 7 / 18)
    same, _ = generation_scores(["a cat"], ["a cat"], wordnet=NO_SYNONYMS)
    assert same["chrf"] == pytest.approx(100.0)


def test_rouge_by_hand():
    # Pair 1: ref "the cat sat on mat", hyp "on mat the cat sat" (short words: nothing to stem).
    #   ROUGE-1: the same 5 words -> 1.0.  ROUGE-2: ref pairs {the cat, cat sat, sat on, on mat},
    #   hyp pairs {on mat, mat the, the cat, cat sat}: 3 of 4 -> 0.75.
    #   ROUGE-L: longest common subsequence "the cat sat" = 3 of 5 words -> 0.6.
    # Pair 2: ref "cat runs", hyp "cats running": the Porter stemmer makes both "cat run" -> all 1.0.
    refs = ["the cat sat on mat", "cat runs"]
    preds = ["on mat the cat sat", "cats running"]
    scores, _ = generation_scores(refs, preds, wordnet=NO_SYNONYMS)
    assert scores["rouge1"] == pytest.approx(1.0)
    assert scores["rouge2"] == pytest.approx((0.75 + 1.0) / 2)
    assert scores["rougeL"] == pytest.approx((0.6 + 1.0) / 2)


def test_meteor_with_a_stand_in_wordnet():
    # hyp "the puss sat", ref "the cat sat". Exact matches: the, sat; no shared stem. (nltk looks
    # synonyms up for the Porter stem of a word; "puss" is its own stem.) With "cat" listed as a
    # synonym of "puss" all 3 words match in one chunk:
    # P = R = 1, Fmean = 1, penalty 0.5 * (1 chunk / 3 matches)^3 = 1/54 -> 1 - 1/54.
    with_synonym = StandInWordNet({"puss": ["puss", "cat"]})
    scores, unavailable = generation_scores(["the cat sat"], ["the puss sat"], wordnet=with_synonym)
    assert scores["meteor"] == pytest.approx(1 - 1 / 54) and not unavailable
    # Without it: 2 matches of 3 -> P = R = 2/3 -> Fmean = P*R / (0.9P + 0.1R) = 2/3;
    # "the" and "sat" are two chunks: penalty 0.5 * (2/2)^3 = 0.5 -> 1/3.
    scores, _ = generation_scores(["the cat sat"], ["the puss sat"], wordnet=NO_SYNONYMS)
    assert scores["meteor"] == pytest.approx(1 / 3)


def test_meteor_with_the_installed_wordnet():
    reader = wordnet.find_wordnet()
    if reader is None:
        pytest.skip("no WordNet installed (apt install wordnet-base)")
    # WordNet lists "dog" among the synonyms of "hound": 4 matches of 4 in one chunk,
    # penalty 0.5 * (1/4)^3 = 1/128 -> 1 - 1/128.
    scores, unavailable = generation_scores(["the big dog barked"], ["The big hound barked"])
    assert scores["meteor"] == pytest.approx(1 - 1 / 128) and not unavailable
    # A full stop is a token of its own: 5 of 5 in one chunk -> 1 - 0.5 * (1/5)^3.
    scores, _ = generation_scores(["the big dog barked."], ["the big hound barked."])
    assert scores["meteor"] == pytest.approx(1 - 0.5 / 125)
    assert wordnet.find_wordnet() is reader  # loaded once, then kept


def test_meteor_says_why_it_is_missing(monkeypatch, tmp_path):
    import nltk.data

    monkeypatch.setattr(wordnet, "_reader", None)
    monkeypatch.setattr(wordnet, "DEBIAN_DICT", tmp_path / "no-such-folder")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty-nltk-data")])
    monkeypatch.delenv(wordnet.ENV_VAR, raising=False)
    scores, unavailable = generation_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores["meteor"] is None and scores["bleu"] == pytest.approx(100.0)
    assert unavailable == {"meteor": wordnet.NOT_INSTALLED}
    assert "apt install wordnet-base" in wordnet.NOT_INSTALLED
    monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path))
    assert wordnet.why_no_wordnet().startswith(f"{wordnet.ENV_VAR} names {tmp_path}")


def test_empty_outputs_score_zero():
    scores, _ = generation_scores(["the cat sat on the mat", "a dog"], ["", ""], wordnet=NO_SYNONYMS)
    for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "meteor", "token_f1", "exact_match"):
        assert scores[key] == 0.0, key


def test_generation_per_example_scores_and_is_wrong():
    refs = ["the cat sat on the mat", "a cat sat down"]
    preds = ["the cat sat on the mat", "the cat sat"]
    corpus, per_example, _, _ = score_outputs("instruction", refs, preds, wordnet=NO_SYNONYMS)
    assert list(corpus) == [k for k in TASK_METRICS["instruction"] if k != "perplexity"]
    assert per_example[0] == pytest.approx({"token_f1": 1.0, "rougeL": 1.0, "chrf": 100.0})
    # Example 2: token F1 0.8 (above); ROUGE-L: "the cat sat" vs "a cat sat down" keeps every word
    # (rouge-score drops no articles): LCS "cat sat" = 2 -> P 2/3, R 2/4, F = 4/7.
    assert per_example[1]["token_f1"] == pytest.approx(0.8)
    assert per_example[1]["rougeL"] == pytest.approx(4 / 7)
    assert 0 < per_example[1]["chrf"] < 100
    assert not is_wrong("instruction", per_example[1])
    assert is_wrong("summarization", {"token_f1": 0.4}) and not is_wrong("summarization", {"token_f1": 0.5})
    assert not is_wrong("text", {"repetition_rate": 0.9})  # no reference, nothing to be wrong about


# ---- diversity ---------------------------------------------------------------------------------------


def test_distinct_n_and_repetition_rate_by_hand():
    # Words: the cat sat | the cat ran -> 6 words, 4 different: distinct-1 = 4/6.
    # Pairs: (the cat) (cat sat) | (the cat) (cat ran) -> 4 pairs, 3 different: distinct-2 = 3/4.
    # Repetition: no pair repeats within either output -> 0.
    assert diversity_scores(["The cat sat.", "the cat ran"]) == pytest.approx(
        {"distinct_1": 4 / 6, "distinct_2": 3 / 4, "repetition_rate": 0.0}
    )
    # "a b a b a": pairs ab ba ab ba; the 3rd and 4th repeat earlier ones -> 2/4.
    # "x y z": pairs xy yz, no repeat -> 0. "hello" has no pair and is left out. Mean (1/2 + 0)/2.
    assert diversity_scores(["a b a b a", "x y z", "hello"])["repetition_rate"] == pytest.approx(0.25)
    assert diversity_scores(["", ""]) == {"distinct_1": None, "distinct_2": None, "repetition_rate": None}


def test_text_task_scores_diversity_only():
    corpus, per_example, unavailable, extras = score_outputs("text", [], ["a b a b a", "hello"])
    assert list(corpus) == ["distinct_1", "distinct_2", "repetition_rate"]
    # Words a b a b a hello: 3 different of 6; pairs ab ba ab ba: 2 different of 4.
    assert corpus == pytest.approx({"distinct_1": 0.5, "distinct_2": 0.5, "repetition_rate": 0.5})
    assert per_example == [{"repetition_rate": 0.5}, {}] and not unavailable and not extras


def test_unknown_task_and_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        score_outputs("poetry", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        qa_scores(["a", "b"], ["a"])
