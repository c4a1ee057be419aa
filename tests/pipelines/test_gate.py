"""The quality gate alone: every rule and the override, on plain numbers."""

from __future__ import annotations

import math

from pipelines.gate import CHALLENGER, CHAMPION, ChampionScore, GateInput, decide


def _inp(**kw: object) -> GateInput:
    base: dict[str, object] = {
        "metric_name": "accuracy",
        "higher_is_better": True,
        "candidate": 0.95,
        "baseline": 0.90,
        "parity_passed": True,
        "parity_max_diff": 1e-7,
        "champion": None,
        "promote": False,
    }
    base.update(kw)
    return GateInput(**base)  # type: ignore[arg-type]


def test_first_model_that_beats_baseline_becomes_champion() -> None:
    d = decide(_inp())
    assert d.alias == CHAMPION and d.passed and not d.overridden
    assert "first model" in d.reason


def test_tie_with_baseline_is_reported_as_a_tie_and_not_promoted() -> None:
    d = decide(_inp(candidate=0.90, baseline_name="logistic-regression"))
    assert d.alias == CHALLENGER and not d.passed
    assert d.reason.startswith("ties the baseline (logistic-regression")
    assert "0.9000 = baseline" in d.reason


def test_loss_to_baseline_names_the_baseline() -> None:
    d = decide(_inp(candidate=0.85, baseline_name="rbf-svm"))
    assert d.alias == CHALLENGER and "does not beat the baseline (rbf-svm" in d.reason


def test_tie_with_champion_is_reported_as_a_tie() -> None:
    d = decide(_inp(champion=ChampionScore("2", 0.95)))
    assert d.alias == CHALLENGER and d.reason.startswith("ties champion v2")


def test_must_beat_the_champion_on_the_same_split() -> None:
    lose = decide(_inp(champion=ChampionScore("3", 0.97)))
    assert lose.alias == CHALLENGER
    assert "champion v3" in lose.reason and "0.9700" in lose.reason
    win = decide(_inp(champion=ChampionScore("3", 0.93)))
    assert win.alias == CHAMPION and "beats champion v3" in win.reason


def test_lower_is_better_metrics() -> None:
    common = {"metric_name": "rmse", "higher_is_better": False, "baseline": 30.0}
    assert decide(_inp(candidate=16.0, **common)).alias == CHAMPION
    assert decide(_inp(candidate=31.0, **common)).alias == CHALLENGER
    d = decide(_inp(candidate=16.0, champion=ChampionScore("1", 15.0), **common))
    assert d.alias == CHALLENGER and "lower is better" in d.reason


def test_parity_failure_blocks_even_promote() -> None:
    d = decide(_inp(parity_passed=False, parity_max_diff=0.5, promote=True))
    assert d.alias == CHALLENGER and not d.overridden
    assert "parity" in d.reason


def test_promote_overrides_and_says_so() -> None:
    d = decide(_inp(candidate=0.5, promote=True))
    assert d.alias == CHAMPION and d.overridden and not d.passed
    assert d.reason.startswith("promoted by --promote") and "baseline" in d.reason


def test_champion_that_cannot_be_scored_stays() -> None:
    d = decide(_inp(champion=ChampionScore("2", None, "expects [-1, 64]")))
    assert d.alias == CHALLENGER and "not comparable" in d.reason


def test_nan_never_wins() -> None:
    assert decide(_inp(candidate=math.nan)).alias == CHALLENGER
    assert decide(_inp(champion=ChampionScore("1", math.nan))).alias == CHAMPION


def test_champion_comparison_uses_candidates_onnx_score_when_given() -> None:
    # torch said 0.95 but the candidate's ONNX file on the same rows ties the champion.
    d = decide(_inp(champion=ChampionScore("1", 0.94, candidate_metric=0.94)))
    assert d.alias == CHALLENGER and "0.9400 = champion accuracy=0.9400" in d.reason
