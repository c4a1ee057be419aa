"""The quality gate: which alias a freshly registered version earns, and why.

Pure logic on numbers, no I/O, so every branch is testable alone. The flow gathers the inputs
(parity result, the candidate's and the baseline's test metric, the current champion re-scored
on the candidate's own test split) and applies the decision as the very last step.

Rules, in order:

1. Parity must have passed (ONNX Runtime agrees with torch within tolerance).
2. The candidate must beat the classical baseline on the primary metric. The baseline is the
   strongest of several classical methods, the one best on the *validation* split
   (``training.baselines``); the test split never chooses it.
3. It must beat the current champion on the same test split; the first model of a name has no
   champion and wins on 1 and 2 alone. A champion that cannot be scored on this split (other
   inputs) is not beaten by default: replacing it is a human decision (``--promote``).

An exact tie (common for accuracy on a test split of a hundred rows) is reported as a tie, not
as a loss and not as a win: the version becomes challenger and its reason says "ties".

``--promote`` overrides rules 2 and 3 and the override is recorded as such; it never overrides a
parity failure, because such a file would serve answers the trained model never gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class ChampionScore:
    """The current champion, re-scored on the candidate's test split.

    ``metric`` is None when it could not be scored there; ``problem`` then says why.
    """

    version: str
    metric: float | None
    problem: str = ""
    #: The candidate's own ONNX file on the same rows, through the same code path; None means
    #: use ``GateInput.candidate``.
    candidate_metric: float | None = None


@dataclass(frozen=True)
class GateInput:
    """Everything the gate decides on."""

    metric_name: str
    higher_is_better: bool
    candidate: float
    baseline: float
    parity_passed: bool
    parity_max_diff: float
    champion: ChampionScore | None = None
    promote: bool = False
    baseline_name: str = "baseline"


@dataclass(frozen=True)
class GateDecision:
    """The verdict: the alias to set, whether the gate itself passed, and the reason in words."""

    alias: str
    passed: bool
    overridden: bool
    reason: str

    @property
    def is_champion(self) -> bool:
        """True when the version becomes the served model."""
        return self.alias == CHAMPION


def _beats(a: float, b: float, higher_is_better: bool) -> bool:
    """Strictly better; NaN never beats anything."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if higher_is_better else a < b


def _fmt(name: str, value: float) -> str:
    return f"{name}={value:.4f}"


def judge(inp: GateInput) -> tuple[bool, str]:
    """Apply rules 1-3; return (passed, reason)."""
    m = inp.metric_name
    direction = "higher" if inp.higher_is_better else "lower"
    base = f"the baseline ({inp.baseline_name}, best of the classical methods on validation)"
    if not inp.parity_passed:
        return False, (
            f"ONNX parity check failed (max diff {inp.parity_max_diff:.2e} over tolerance)"
        )
    if inp.candidate == inp.baseline:
        return False, (
            f"ties {base} on {m}: candidate {_fmt(m, inp.candidate)} = baseline "
            f"{_fmt(m, inp.baseline)}; a tie is not a win, so it is not promoted"
        )
    if not _beats(inp.candidate, inp.baseline, inp.higher_is_better):
        return False, (
            f"does not beat {base} on {m} ({direction} is better): candidate "
            f"{_fmt(m, inp.candidate)} vs baseline {_fmt(m, inp.baseline)}"
        )
    champ = inp.champion
    if champ is None:
        return True, (
            f"first model of this name; beats {base} ({_fmt(m, inp.candidate)} vs "
            f"{inp.baseline:.4f}) and passed parity"
        )
    if champ.metric is None:
        return False, (
            f"champion v{champ.version} could not be scored on this test split "
            f"({champ.problem}); not comparable, so it stays champion"
        )
    mine = inp.candidate if champ.candidate_metric is None else champ.candidate_metric
    if mine == champ.metric:
        return False, (
            f"ties champion v{champ.version} on the same test split: candidate "
            f"{_fmt(m, mine)} = champion {_fmt(m, champ.metric)}; a tie is not a win, so the "
            "champion stays"
        )
    if not _beats(mine, champ.metric, inp.higher_is_better):
        return False, (
            f"does not beat champion v{champ.version} on the same test split ({direction} is "
            f"better): candidate {_fmt(m, mine)} vs champion {_fmt(m, champ.metric)}"
        )
    return True, (
        f"beats champion v{champ.version} ({_fmt(m, mine)} vs {champ.metric:.4f}) "
        f"and {base} ({inp.baseline:.4f}); parity passed"
    )


def decide(inp: GateInput) -> GateDecision:
    """The alias for the candidate: ``champion`` if it passed the gate or was promoted."""
    passed, reason = judge(inp)
    if passed:
        return GateDecision(alias=CHAMPION, passed=True, overridden=False, reason=reason)
    if inp.promote and inp.parity_passed:
        return GateDecision(
            alias=CHAMPION,
            passed=False,
            overridden=True,
            reason=f"promoted by --promote, overriding the gate, which said: {reason}",
        )
    return GateDecision(alias=CHALLENGER, passed=False, overridden=False, reason=reason)
