"""The Evaluate step's metrics: what each one means, and how to compute it with the field's libraries.

Classification scores come from scikit-learn, BLEU and chrF from sacrebleu (corpus scores, 0-100),
ROUGE from rouge-score (F-measure, Porter stemmer), METEOR from nltk (with an offline WordNet, see
core.evaluate.wordnet). Exact match and token F1 follow the SQuAD evaluation script, and the
diversity figures are simple counts; those few lines are written here because the libraries
that carry them (evaluate, torchmetrics) bring large dependencies for a dozen lines.
Perplexity needs the model, so only its description lives here.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

# A reference is one string, or (question answering) a list of accepted answers.
Reference = str | Sequence[str]


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    hover: str  # what it measures and how to read it, for a student
    higher_is_better: bool = True
    scale: str = "fraction"  # "fraction" (0-1, shown as %), "percent" (0-100 as is), "ratio"


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("accuracy", "Accuracy", "The share of examples whose predicted label is the right one. Read "
               "it beside the class sizes: always guessing the biggest class already scores its share."),
        Metric("precision_macro", "Precision (macro)", "For each label: of the examples predicted as that "
               "label, the share that really are it; then averaged over labels, each label counting the "
               "same. Low precision means many false alarms."),
        Metric("recall_macro", "Recall (macro)", "For each label: of the examples that really are that "
               "label, the share the model found; then averaged over labels, each counting the same. Low "
               "recall means many misses."),
        Metric("f1_macro", "F1 (macro)", "Per label, the harmonic mean of precision and recall, averaged "
               "over labels with equal weight: a rare label the model never gets right pulls it down even "
               "when accuracy looks good."),
        Metric("f1_micro", "F1 (micro)", "F1 with every example pooled, whatever its label. With one label "
               "per example it equals accuracy; a big gap to macro F1 means the small labels do worse than "
               "the big ones."),
        Metric("exact_match", "Exact match", "The share of outputs identical to a reference after "
               "normalising (lower case, no punctuation, no a/an/the, single spaces). Strict: one extra "
               "word scores 0."),
        Metric("token_f1", "Token F1", "Word overlap between output and reference after the same "
               "normalising: the harmonic mean of the share of output words found in the reference and the "
               "share of reference words found in the output. Gives partial credit."),
        Metric("bleu", "BLEU", "How many of the output's 1- to 4-word sequences appear in the reference "
               "(sacreBLEU, 0-100), with a penalty for outputs shorter than the reference. Built for "
               "translation, where 30 or more is good; summaries and free answers score lower. Ignores "
               "synonyms.", scale="percent"),
        Metric("chrf", "chrF", "Overlap of character sequences (1 to 6 characters) between output and "
               "reference, 0-100, weighting recall twice as much as precision. Gives credit for word forms "
               "that differ only in their ending.", scale="percent"),
        Metric("rouge1", "ROUGE-1", "The share of single words (after stemming) shared by output and "
               "reference, as the F-measure of recall and precision, 0-1. The usual first summary score."),
        Metric("rouge2", "ROUGE-2", "Like ROUGE-1 but for pairs of adjacent words: rewards getting the "
               "phrasing, not only the vocabulary, right."),
        Metric("rougeL", "ROUGE-L", "The longest sequence of words that appears in both output and "
               "reference in the same order (gaps allowed), as an F-measure, 0-1: rewards keeping the "
               "reference's order."),
        Metric("meteor", "METEOR", "Matches words exactly, then by stem, then by WordNet synonym, weighs "
               "recall above precision, and penalises matches scattered in small pieces, 0-1. Closer to "
               "human judgement than BLEU on single sentences."),
        Metric("perplexity", "Perplexity", "How surprised the model is by the reference answers: e to the "
               "mean negative log-probability of the answer tokens. Lower is better; 1 would be a perfect "
               "guess.", higher_is_better=False, scale="ratio"),
        Metric("text_perplexity", "Perplexity (text)", "Perplexity over a held-out text (the Calibrate "
               "step's evaluation text, 512-token windows): how well the model still predicts plain "
               "language, the usual measure of what quantization cost. Lower is better.",
               higher_is_better=False, scale="ratio"),
        Metric("distinct_1", "Distinct-1", "Different words ÷ all words, over all outputs together. Low "
               "values mean the model keeps using the same words."),
        Metric("distinct_2", "Distinct-2", "Different word pairs ÷ all word pairs over all outputs. Low "
               "values mean the outputs repeat the same phrases, often across examples."),
        Metric("repetition_rate", "Repetition", "Within each output, the share of word pairs that already "
               'occurred earlier in that output, averaged over outputs. High values mean loops ("the the '
               'the"). Lower is better.', higher_is_better=False),
    )
}  # fmt: skip

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro"),
    "qa": ("exact_match", "token_f1", "rougeL", "perplexity"),
    "summarization": ("rougeL", "rouge1", "rouge2", "bleu", "chrf", "meteor", "perplexity", "distinct_2"),
    "instruction": (
        "token_f1", "rougeL", "bleu", "chrf", "meteor", "exact_match", "perplexity", "distinct_2",
        "repetition_rate",
    ),
    "text": ("perplexity", "distinct_1", "distinct_2", "repetition_rate"),
}  # fmt: skip
TASK_METRICS["causal_lm"] = TASK_METRICS["text"]  # the project's name for plain (domain) text

# An output is "wrong" for generation tasks when fewer than half of its words match the reference
# (token F1 below this): loose enough that rewording passes, strict enough to catch off-topic text.
WRONG_BELOW_TOKEN_F1 = 0.5


def format_value(key: str, value: float | None) -> str:
    """A score as the table shows it: "83.3 %" for fractions, "27.41" for 0-100 scores, "12.3"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    metric = METRICS.get(key)
    if metric is None:
        return f"{value:.4g}"
    if metric.scale == "fraction":
        return f"{100 * value:.1f} %"
    if metric.scale == "percent":
        return f"{value:.2f}"
    return f"{value:.1f}"


# ---- SQuAD-style answer comparison ----------------------------------------------------------

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The SQuAD script's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_NO_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _accepted(reference: Reference) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference) or [""]


def exact_match(reference: Reference, prediction: str) -> float:
    """1.0 when the normalised prediction equals any accepted answer, else 0.0."""
    guess = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == guess for answer in _accepted(reference)))


def token_f1(reference: Reference, prediction: str) -> float:
    """The best word-overlap F1 against the accepted answers (both empty: 1; one empty: 0)."""
    guess = normalize_answer(prediction).split()
    return max(_overlap_f1(normalize_answer(answer).split(), guess) for answer in _accepted(reference))


def _overlap_f1(truth: list[str], guess: list[str]) -> float:
    if not truth or not guess:
        return float(truth == guess)
    common = sum((Counter(truth) & Counter(guess)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(guess), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def _check_lengths(references: Sequence[Any], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


# ---- classification --------------------------------------------------------------------------


def classification_scores(
    references: Sequence[str], predictions: Sequence[str], labels: Sequence[str]
) -> tuple[dict[str, float | None], list[list[int]]]:
    """Accuracy, macro precision/recall/F1 over ``labels`` and micro F1, plus the confusion matrix.

    Matrix rows are true labels, columns predicted ones, both in ``labels`` order. A prediction that
    is not a label counts as wrong: a miss for its true label, in no column of the matrix."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    _check_lengths(references, predictions)
    truth = [r.strip() for r in references]
    guess = [p.strip() for p in predictions]
    labels = list(labels) or sorted(set(truth))
    if not truth:
        return dict.fromkeys(TASK_METRICS["classification"]), [[0] * len(labels) for _ in labels]
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, guess, labels=labels, average="macro", zero_division=0
    )
    scores = {
        "accuracy": sum(t == g for t, g in zip(truth, guess, strict=True)) / len(truth),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        # Over every value seen, predictions outside the labels included: each wrong output is then
        # a false positive somewhere and a miss somewhere, so micro F1 equals accuracy.
        "f1_micro": float(f1_score(truth, guess, average="micro", zero_division=0)),
    }
    return scores, confusion_matrix(truth, guess, labels=labels).tolist()


# ---- question answering ----------------------------------------------------------------------


def qa_scores(references: Sequence[Reference], predictions: Sequence[str]) -> dict[str, float | None]:
    """Exact match and token F1 averaged over examples; each reference may list accepted answers."""
    _check_lengths(references, predictions)
    pairs = list(zip(references, predictions, strict=True))
    return {
        "exact_match": _mean([exact_match(r, p) for r, p in pairs]),
        "token_f1": _mean([token_f1(r, p) for r, p in pairs]),
    }


# ---- generation against references ------------------------------------------------------------

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@cache
def _rouge_scorer() -> Any:
    from nltk.stem.porter import PorterStemmer
    from rouge_score import rouge_scorer, tokenize, tokenizers

    class StemmingTokenizer(tokenizers.Tokenizer):
        """rouge-score's own tokenizer and Porter stemmer (as with use_stemmer=True), remembering
        each word's stem: stemming is most of ROUGE's time, and words repeat."""

        def __init__(self) -> None:
            self.stem = lru_cache(maxsize=200_000)(PorterStemmer().stem)

        def tokenize(self, text: str) -> list[str]:
            return tokenize.tokenize(text, self)

    return rouge_scorer.RougeScorer(list(_ROUGE_TYPES), tokenizer=StemmingTokenizer())


def rouge_per_example(references: Sequence[Reference], predictions: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measures per example; with several references, the best one counts."""
    scorer = _rouge_scorer()
    out = []
    for reference, prediction in zip(references, predictions, strict=True):
        scores = scorer.score_multi(_accepted(reference), prediction)
        out.append({key: float(scores[key].fmeasure) for key in _ROUGE_TYPES})
    return out


def _reference_streams(references: Sequence[Reference]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position; None where an example has fewer."""
    accepted = [_accepted(r) for r in references]
    width = max((len(a) for a in accepted), default=1)
    return [[a[i] if i < len(a) else None for a in accepted] for i in range(width)]


def generation_scores(
    references: Sequence[Reference], predictions: Sequence[str], wordnet: Any = None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Corpus scores of generated text against references, and metric -> why it has no value.

    ``wordnet`` is what METEOR looks synonyms up in (anything with nltk's ``synsets(word)``); by
    default the offline WordNet core.evaluate.wordnet finds. Without one METEOR is None, and the
    second dict says why."""
    scores, _, unavailable = _generation(references, predictions, wordnet)
    return scores, unavailable


def _generation(
    references: Sequence[Reference], predictions: Sequence[str], wordnet: Any
) -> tuple[dict[str, float | None], list[dict[str, float]], dict[str, str]]:
    import sacrebleu
    from sacrebleu.metrics import CHRF

    _check_lengths(references, predictions)
    keys = ("bleu", "chrf", *_ROUGE_TYPES, "meteor", "token_f1", "exact_match")
    if not predictions:
        return dict.fromkeys(keys), [], {}
    predictions = list(predictions)
    streams = _reference_streams(references)
    rouge = rouge_per_example(references, predictions)
    chrf = CHRF()
    per_example = [
        {
            "token_f1": token_f1(reference, prediction),
            "rougeL": scores["rougeL"],
            "chrf": chrf.sentence_score(prediction, _accepted(reference)).score,
        }
        for reference, prediction, scores in zip(references, predictions, rouge, strict=True)
    ]
    scores: dict[str, float | None] = {
        "bleu": sacrebleu.corpus_bleu(predictions, streams).score,
        "chrf": chrf.corpus_score(predictions, streams).score,
        **{key: _mean([s[key] for s in rouge]) for key in _ROUGE_TYPES},
        "token_f1": _mean([e["token_f1"] for e in per_example]),
        "exact_match": _mean([exact_match(r, p) for r, p in zip(references, predictions, strict=True)]),
    }
    scores["meteor"], unavailable = _meteor(references, predictions, wordnet)
    return scores, per_example, unavailable


def _meteor(
    references: Sequence[Reference], predictions: Sequence[str], wordnet: Any
) -> tuple[float | None, dict[str, str]]:
    from core.evaluate.wordnet import find_wordnet, meteor_per_example, why_no_wordnet

    wordnet = wordnet if wordnet is not None else find_wordnet()
    if wordnet is None:
        return None, {"meteor": why_no_wordnet()}
    return _mean(meteor_per_example([_accepted(r) for r in references], predictions, wordnet)), {}


# ---- diversity ---------------------------------------------------------------------------------

_WORD = re.compile(r"\w+(?:['’]\w+)*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(predictions: Sequence[str], n: int) -> float | None:
    """Different n-grams ÷ all n-grams over all outputs (lower-cased words); None with no n-grams."""
    grams = [g for text in predictions for g in _ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(text: str, n: int = 2) -> float | None:
    """The share of the text's n-grams that already occurred earlier in it; None with no n-grams."""
    grams = _ngrams(_words(text), n)
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def diversity_scores(predictions: Sequence[str]) -> dict[str, float | None]:
    """distinct-1, distinct-2 and the repetition rate averaged over outputs that have a word pair."""
    rates = [r for r in (repetition_rate(text) for text in predictions) if r is not None]
    return {
        "distinct_1": distinct_n(predictions, 1),
        "distinct_2": distinct_n(predictions, 2),
        "repetition_rate": _mean(rates),
    }


# ---- one call per task ---------------------------------------------------------------------------


def score_outputs(
    task: str,
    references: Sequence[Reference],
    predictions: Sequence[str],
    labels: Sequence[str] = (),
    wordnet: Any = None,
) -> tuple[dict[str, float | None], list[dict[str, float]], dict[str, str], dict[str, Any]]:
    """Every metric of ``task`` except perplexity (the model computes that).

    Returns corpus scores (metric -> value, None if unavailable), per-example scores
    (classification, qa: exact_match and token_f1; summarization, instruction: token_f1, rougeL and
    sentence chrF; text: repetition_rate where the output has a word pair), metric -> why it is
    unavailable, and extras ({"confusion": matrix, "outside_labels": count} for classification)."""
    if task not in TASK_METRICS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_METRICS)}")
    wanted = [key for key in TASK_METRICS[task] if key != "perplexity"]
    extras: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    if task == "classification":
        scores, per_example, extras = _classification(references, predictions, labels)
    elif task == "qa":
        scores, per_example = _qa(references, predictions)
    elif task in ("text", "causal_lm"):
        rates = [repetition_rate(text) for text in predictions]
        scores, per_example = {}, [{"repetition_rate": r} if r is not None else {} for r in rates]
    else:
        scores, per_example, unavailable = _generation(references, predictions, wordnet)
    if {"distinct_1", "distinct_2", "repetition_rate"} & set(wanted):
        scores = {**scores, **diversity_scores(predictions)}
    return {key: scores.get(key) for key in wanted}, per_example, unavailable, extras


def _classification(
    references: Sequence[str], predictions: Sequence[str], labels: Sequence[str]
) -> tuple[dict[str, float | None], list[dict[str, float]], dict[str, Any]]:
    scores, matrix = classification_scores(references, predictions, labels)
    # exact_match here is accuracy's test (same label after trimming spaces), not SQuAD's looser one.
    per_example = [
        {"exact_match": float(r.strip() == p.strip()), "token_f1": token_f1(r, p)}
        for r, p in zip(references, predictions, strict=True)
    ]
    known = set(labels) or {r.strip() for r in references}
    outside = sum(p.strip() not in known for p in predictions)
    return scores, per_example, {"confusion": matrix, "outside_labels": outside}


def _qa(
    references: Sequence[Reference], predictions: Sequence[str]
) -> tuple[dict[str, float | None], list[dict[str, float]]]:
    per_example = [
        {"exact_match": exact_match(r, p), "token_f1": token_f1(r, p)}
        for r, p in zip(references, predictions, strict=True)
    ]
    rouge = rouge_per_example(references, predictions)
    scores = {
        "exact_match": _mean([e["exact_match"] for e in per_example]),
        "token_f1": _mean([e["token_f1"] for e in per_example]),
        "rougeL": _mean([s["rougeL"] for s in rouge]),
    }
    return scores, per_example


def is_wrong(task: str, example_score: dict[str, float]) -> bool:
    """Whether the output table's "wrong" filter shows this example.

    Classification and QA: not an exact match. Other tasks with references: token F1 below
    WRONG_BELOW_TOKEN_F1 (0.5). Plain text has no reference, so nothing is wrong."""
    if task in ("classification", "qa"):
        return example_score.get("exact_match", 0.0) == 0.0
    f1 = example_score.get("token_f1")
    return f1 is not None and f1 < WRONG_BELOW_TOKEN_F1
