"""Richer feedback (issue 15 item 1): what a submission may carry besides the ranking, checked
against the project's ``FeedbackSettings``.

- A pairwise **strength** on the project's scale (``records`` "Preference strength"): required for a
  strict choice when the project has a scale, refused for a tie (the tie is the scale's middle) and
  in projects without one.
- **Unsafe candidates** (``unsafe_ids``): any shown candidate; naming one sets the ranking's
  ``unsafe`` flag, so the trainers can keep it from ever being "chosen" (``records.apply_flags``).
- Per-candidate **ratings**: a Likert score (1–7), acceptability, metadata labels from the project's
  list, a comment — each only where the project asks for it, one rating per shown candidate at most.

Pure functions of the request and the settings: no database, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankloop.labeling.schemas import FeedbackSettings, RatingIn, SubmitIn
from rankloop.labeling.services.errors import Invalid, brief, listing
from rankloop.records import strength_levels


@dataclass(frozen=True)
class Checked:
    """A submission's feedback, checked, as stored."""

    strength: int | None
    strength_scale: int | None
    unsafe_ids: list[str] | None
    unsafe: bool
    ratings: list[RatingIn]


_NONE = FeedbackSettings()


def settings_of(raw: Any) -> FeedbackSettings | None:
    """The stored JSON (``projects.feedback``) as settings; None when the project has none."""
    if raw is None:
        return None
    return raw if isinstance(raw, FeedbackSettings) else FeedbackSettings.model_validate(raw)


def check_submission(fb: FeedbackSettings | None, mode: str, order: list[list[str]], shown: frozenset[str],
                     body: SubmitIn) -> Checked:
    """``body``'s strength, unsafe candidates and ratings, or ``Invalid`` naming what and where."""
    if fb is None and body.strength is None and not body.unsafe_ids and not body.ratings:
        return Checked(None, None, None, body.unsafe, [])  # the hot path of a project without feedback
    fb = fb or _NONE
    strength, scale = body.strength, None
    strict_pair = len(order) == 2 and all(len(g) == 1 for g in order)
    if fb.strength_scale is not None and mode == "pairwise":
        scale = fb.strength_scale
        levels = strength_levels(scale)
        if strict_pair and strength is None:
            raise Invalid(f"strength: this project asks how much better the chosen response is (1 … {levels} "
                          f"on its {scale}-point scale)")
        if strength is not None and not strict_pair:
            raise Invalid("strength: a tie has no strength (it is the scale's middle); send the tie without one")
        if strength is not None and strength > levels:
            raise Invalid(f"strength: at most {levels} on this project's {scale}-point scale, got {strength}")
    elif strength is not None:
        raise Invalid("strength: this project takes no preference strength (no strength scale set)")
    if strength is None:
        scale = None

    unknown = sorted(set(body.unsafe_ids) - shown)
    if unknown:
        raise Invalid(f"unsafe_ids: not shown in this task: [{listing([repr(c) for c in unknown])}]")
    unsafe_ids = sorted(set(body.unsafe_ids)) or None

    allowed = set(fb.labels)
    seen: set[str] = set()
    ratings = []
    for i, r in enumerate(body.ratings):
        where = f"ratings[{i}] ({brief(r.candidate_id)})"
        if r.candidate_id not in shown:
            raise Invalid(f"{where}: not a candidate shown in this task")
        if r.candidate_id in seen:
            raise Invalid(f"{where}: this candidate is rated twice")
        seen.add(r.candidate_id)
        if r.score is not None and not fb.likert:
            raise Invalid(f"{where}: score: this project asks for no Likert rating")
        if r.acceptable is not None and not fb.acceptability:
            raise Invalid(f"{where}: acceptable: this project asks for no acceptability")
        bad = [x for x in r.labels if x not in allowed]
        if bad:
            raise Invalid(f"{where}: labels: not among this project's labels "
                          f"[{listing([repr(x) for x in sorted(allowed)]) or 'none'}]: [{listing([repr(x) for x in bad])}]")
        if len(set(r.labels)) != len(r.labels):
            raise Invalid(f"{where}: labels: a label is given twice")
        comment = (r.comment or "").strip() or None
        if comment is not None and not fb.comments:
            raise Invalid(f"{where}: comment: this project takes no per-candidate comments")
        if r.score is None and r.acceptable is None and not r.labels and comment is None:
            continue  # an empty rating says nothing: not stored
        ratings.append(r.model_copy(update={"comment": comment}))
    return Checked(strength, scale, unsafe_ids, bool(body.unsafe or unsafe_ids), ratings)


def settings_from_form(strength_scale: str, likert: bool, acceptability: bool, comments: bool, labels: str) -> dict | None:
    """The admin page's "More feedback" fields as ``FeedbackSettings`` data (checked by
    ``ProjectCreate``); None when nothing was asked for. ``labels``: one a line, blank lines ignored."""
    scale = strength_scale.strip()
    if scale and not scale.isdigit():
        raise Invalid(f"preference strength: a number of points (5 or 8), got {brief(scale)}")
    fb = {"strength_scale": int(scale) if scale else None, "likert": likert, "acceptability": acceptability,
          "comments": comments, "labels": [ln.strip() for ln in labels.splitlines() if ln.strip()]}
    return fb if (fb["strength_scale"] or likert or acceptability or comments or fb["labels"]) else None
