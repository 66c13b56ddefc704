"""Evaluation metrics with hand-worked values, and the CLIs' handling of bad input."""

import json
import math

import pytest

from rankloop.reward.eval import kendall_tau_b, ranking_metrics

from .conftest import run_cli


def test_metrics_hand_worked():
    # Ranking 1 (K=3, no ties): scores agree on 2 of 3 pairs. Ranking 2 (K=2): correct.
    m = ranking_metrics([[3.0, 1.0, 2.0], [0.5, -0.5]], [[0, 1, 2], [0, 1]])
    assert m["pairs"] == 4 and m["rankings"] == 2
    assert m["pairwise_accuracy"] == pytest.approx(3 / 4)
    assert m["exact_ranking_accuracy"] == pytest.approx(1 / 2)
    # τ of ranking 1: 2 concordant, 1 discordant → 1/3; ranking 2: 1.
    assert m["kendall_tau"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["mean_margin"] == pytest.approx(((3 - 1) + (3 - 2) + (1 - 2) + 1.0) / 4)
    assert m["scores"]["max"] == 3.0 and m["scores"]["best_mean"] == pytest.approx(1.75)


def test_ties_in_labels_and_scores():
    m = ranking_metrics([[1.0, 1.0, 0.0]], [[0, 0, 1]])  # a = b > c; scores tie a, b
    assert m["pairs"] == 2 and m["pairwise_accuracy"] == 1.0
    m = ranking_metrics([[1.0, 1.0]], [[0, 1]])  # a score tie counts ½ in pairwise, 0 in exact: at K = 2
    assert m["pairwise_accuracy"] == 0.5 and m["exact_ranking_accuracy"] == 0.0  # they differ on score ties
    assert kendall_tau_b([1.0, 1.0], [1, 1]) is None
    assert math.isnan(ranking_metrics([[1.0, 2.0]], [[0, 0]])["pairwise_accuracy"])


def test_cli_reports_bad_row_with_file_line_and_hint(tmp_path, tiny_gpt2, rank_data):
    bad = tmp_path / "bad.jsonl"
    lines = rank_data["train"].read_text().splitlines()[:5]
    row = json.loads(lines[2])
    row["ranking"] = [["c0"], ["c1"], ["c2"], ["c9"]]
    lines[2] = json.dumps(row)
    bad.write_text("\n".join(lines) + "\n")
    proc = run_cli("train-rm", "--data", bad, "--model", tiny_gpt2, "--output", tmp_path / "rm", check=False)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert f"error: {bad}:3:" in err and "unknown candidate" in err and "--skip-invalid" in err
    assert not (tmp_path / "rm" / "model.safetensors").exists()

    proc = run_cli("train-rm", "--data", bad, "--model", tiny_gpt2, "--output", tmp_path / "rm", "--skip-invalid",
                   "--max-steps", "1", "--batch-size", "2", "--no-progress")
    assert "skipped 1 of 5 rows" in " ".join(proc.stderr.split())
    assert (tmp_path / "rm" / "model.safetensors").exists()

    proc = run_cli("eval-rm", "--model", tmp_path / "rm", "--data", bad, check=False)
    assert proc.returncode == 2 and f"{bad}:3:" in " ".join(proc.stderr.split())
    proc = run_cli("eval-rm", "--model", tmp_path / "rm", "--data", bad, "--skip-invalid")
    out = json.loads(proc.stdout)
    assert out["skipped"] == 1 and out["rankings"] == 4


def test_cli_config_errors(tmp_path):
    proc = run_cli("train-rm", "--data", "x.jsonl", check=False)
    assert proc.returncode == 2 and "model" in proc.stderr and "output" in proc.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: a\nmodel: b\noutput: c\nlearning_rate: 3\n")
    proc = run_cli("train-rm", "--config", cfg, check=False)
    assert proc.returncode == 2 and "learning_rate" in proc.stderr


def test_identical_texts_in_different_groups_are_no_pair():
    """A > A' > B with A' the text of A: a perfect model (A and A' score alike, above B) is perfect."""
    scores, ranks, same = [[1.0, 1.0, 0.0]], [[0, 1, 2]], [[0, 0, 2]]
    m = ranking_metrics(scores, ranks, same)
    assert m["pairs"] == 2 and m["pairwise_accuracy"] == 1.0 and m["exact_ranking_accuracy"] == 1.0
    assert m["kendall_tau"] == pytest.approx(1.0) and m["mean_margin"] == pytest.approx(1.0)
    before = ranking_metrics(scores, ranks)  # the pair of copies counted as a score tie: 2.5 / 3
    assert before["pairwise_accuracy"] == pytest.approx(2.5 / 3) and before["exact_ranking_accuracy"] == 0.0


def test_encode_examples_marks_identical_texts():
    from rankloop.testing import tiny_tokenizer
    from rankloop.records import CandidateText, RankedExample, Ranking
    from rankloop.reward.eval import encode_examples

    def ex(texts, order):
        return RankedExample(prompt_id="p", prompt="q?", ranking=Ranking(prompt_id="p", order=order),
                             candidates=[CandidateText(id=str(i), text=x) for i, x in enumerate(texts)])

    tok = tiny_tokenizer()
    dup, plain = encode_examples([ex([" a", " b", " a"], ["0", "1", "2"]), ex([" a", " b"], ["1", "0"])], tok, 32)
    assert dup.text_class == [0, 1, 0] and plain.text_class is None
    assert dup.ids[0] == dup.ids[2]
