"""SuperNI metrics: hand-computed golden values, the official script's loop, and bad input."""
import string

import pytest
from rouge_score import rouge_scorer

from skillmix.errors import SkillMixError
from skillmix.metrics import exact_match, normalize_answer, rouge_scores, superni_metrics


def test_normalize_answer_golden():
    assert normalize_answer("  The Cat's   hat!!\n") == "the cats hat"
    assert normalize_answer("A-B, (c)") == "ab c"  # punctuation removed, not replaced by spaces


def test_exact_match_golden():
    assert exact_match("Yes.", ["no", "YES"]) == 1.0
    assert exact_match("the answer", ["answer"]) == 0.0  # articles are kept
    assert exact_match("", ["", "x"]) == 1.0


def test_rouge_golden_values():
    # unigram overlap the x2, cat, on, mat = 5 of 6 on each side; LCS "the cat on the mat" = 5
    scores = rouge_scores("the cat sat on the mat", ["the cat is on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rougeL": 5 / 6, "rougeLsum": 5 / 6})
    # P = 2/2, R = 2/6 -> F = 2PR / (P + R) = 0.5
    assert rouge_scores("the cat", ["the cat sat on the mat"])["rouge1"] == pytest.approx(0.5)
    # Porter stemming: cats -> cat, running/runs -> run
    assert rouge_scores("Cats running", ["cat runs"])["rougeL"] == pytest.approx(1.0)


def test_rouge_lsum_splits_sentences_on_newlines():
    # token LCS of "red blue green pink" vs "green pink red blue" is 2 of 4; per-sentence union LCS is 4 of 4
    scores = rouge_scores("red blue\ngreen pink", ["green pink\nred blue"])
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["rougeLsum"] == pytest.approx(1.0)
    assert scores["rouge1"] == pytest.approx(1.0)


def test_multi_reference_takes_max_per_metric():
    scores = rouge_scores("the blue house", ["a blue house", "the red car"])
    assert scores["rouge1"] == pytest.approx(2 / 3)
    result = superni_metrics(["the blue house"], [["a blue house", "the blue house."]])
    assert result["exact_match"] == 100.0 and result["rougeL"] == 100.0


def test_empty_and_missing_predictions_count_as_empty_string():
    result = superni_metrics(["", None], [["an answer"], ["another"]])
    assert {k: result[k] for k in ("exact_match", "rouge1", "rougeL", "rougeLsum")} == dict.fromkeys(
        ("exact_match", "rouge1", "rougeL", "rougeLsum"), 0.0
    )
    assert result["num_instances"] == 2
    assert superni_metrics([None], [[""]])["exact_match"] == 100.0  # "" == "" after normalisation


def _official_compute_metrics(predictions, references):
    """natural-instructions eval/automatic/evaluation.py, written out as the slow reference."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def normalize(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(s.split())

    em = rouge_l = 0.0
    for pred, gold in zip(predictions, references):
        em += max(float(normalize(pred) == normalize(g)) for g in gold)
        rouge_l += max(scorer.score(prediction=pred, target=g)["rougeL"].fmeasure for g in gold)
    return {"exact_match": round(100.0 * em / len(references), 4), "rougeL": round(100.0 * rouge_l / len(references), 4)}


def test_matches_official_script_and_direct_rouge_score():
    predictions = ["Yes", "The film was boring.", "entailment", "He went to the store\nto buy milk", "", "cats"]
    references = [["yes"], ["This movie is boring", "boring film"], ["Contradiction"],
                  ["He went to buy milk at the store."], ["no"], ["cat", "dog"]]
    result = superni_metrics(predictions, references)
    official = _official_compute_metrics(predictions, references)
    assert result["exact_match"] == official["exact_match"] and result["rougeL"] == official["rougeL"]
    for key in ("rouge1", "rougeLsum"):
        direct = rouge_scorer.RougeScorer([key], use_stemmer=True)
        best = [max(direct.score(r, p)[key].fmeasure for r in refs) for p, refs in zip(predictions, references)]
        assert result[key] == round(100 * sum(best) / len(best), 4)


def test_per_task_per_category_micro_and_macro():
    predictions = ["yes", "no", "wrong", "right"]
    references = [["Yes"], ["no."], ["x"], ["Right"]]
    result = superni_metrics(
        predictions, references,
        tasks=["task_a", "task_a", "task_a", "task_b"],
        categories=["Entailment", "Entailment", ["Entailment", "Other"], "Other"],
    )
    assert result["exact_match"] == 75.0  # micro: 3 of 4
    assert result["per_task"]["task_a"]["exact_match"] == 66.6667 and result["per_task"]["task_a"]["num_instances"] == 3
    assert result["per_task"]["task_b"]["exact_match"] == 100.0
    assert result["macro"]["exact_match"] == 83.3333 and result["macro"]["num_tasks"] == 2  # (200/3 + 100) / 2
    assert result["per_category"]["Entailment"]["exact_match"] == 66.6667
    assert result["per_category"]["Other"] == {**result["per_category"]["Other"], "exact_match": 50.0, "num_instances": 2}


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"predictions": ["a", "b"], "references": [["a"]]}, r"got 1 references for 2 predictions"),
        ({"predictions": ["a"], "references": [[]]}, r"references\[0\] must be a string or a non-empty list"),
        ({"predictions": ["a"], "references": [["a", 1]]}, r"references\[0\] must be"),
        ({"predictions": [3], "references": [["a"]]}, r"predictions\[0\] must be a string or None"),
        ({"predictions": [], "references": []}, r"no predictions to score"),
        ({"predictions": ["a"], "references": [["a"]], "tasks": ["t", "u"]}, r"got 2 task names for 1 predictions"),
        ({"predictions": ["a"], "references": [["a"]], "categories": [None]}, r"categories\[0\] must be"),
    ],
)
def test_bad_metric_input(kwargs, pattern):
    with pytest.raises(SkillMixError, match=pattern):
        superni_metrics(**kwargs)
