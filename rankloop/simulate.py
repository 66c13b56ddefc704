"""Simulated labelers: the gold preference plus noise, ranking through the labeling app's API.

A simulated labeler is a Thurstone judge: for each candidate ``i`` it perceives
``g_i + ε_i`` with ``g_i`` the gold score (``rankloop.corpus.gold_score``) and ``ε_i ~ N(0, σ²)``
drawn afresh for every labeler and item, and ranks by the perceived value (identical texts are
tied). Two labelers then agree on a pair whose gold gap is ``d`` with probability

    p² + (1 − p)²,   p = Φ(d / (σ √2))

and on a pair of copies of one text always (both tie it).

:func:`calibrate_sigma` solves for the σ that makes the mean of that over all candidate pairs of a
batch equal the target — 0.73 by default, the inter-labeler agreement InstructGPT reports
(Ouyang et al. 2022, §5.1) — so the reward model learns from rankings as noisy as people's.

Labelers work exactly as people do: each is a user of the labeling app, logs in, asks for its
next task, submits a ranking with an idempotency key; the rankings come back out through
``rankloop.labeling.export`` like any others. Nothing here touches the database.

Simulated demonstrators (round 0 of the loop, InstructGPT's step 1) write answers the same way,
through the app's demonstration API. How one answer is made: the demonstrator drafts ``drafts``
answers it could write — by default ``rankloop.corpus.write_answer``, the corpus's own writer
(the text distribution the base model was pre-trained on) — perceives each draft's gold score with
noise, ``g_i + ε_i`` with ``ε_i ~ N(0, σ²)`` as a labeler does, and submits the draft it perceives
best. With ``σ = 0`` it always submits the gold-best of its drafts; as ``σ`` grows its choice tends
to a random draft, i.e. to the pre-training distribution. A demonstration is thus better than a
typical answer by the gold preference, as a person's is, but not the best possible one.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

GoldFn = Callable[[list[str], list[str]], Sequence[float]]

INSTRUCTGPT_AGREEMENT = 0.73


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def expected_agreement(gold_groups: Sequence[Sequence[float]], sigma: float,
                       texts: Sequence[Sequence[str]] | None = None) -> float:
    """Mean probability that two independent labelers order a candidate pair the same way.

    ``gold_groups``: the gold scores of each item's candidates; ``texts``: their texts, grouped
    alike. Two copies of one text are tied by every labeler, so their pair agrees with probability
    1; without ``texts`` every pair is taken for two different texts. Different texts with equal
    gold scores agree with probability 1/2.
    """
    if texts is not None and [len(t) for t in texts] != [len(g) for g in gold_groups]:
        raise ValueError("texts must be grouped as gold_groups: one text per gold score")
    total, n = 0.0, 0
    for item, g in enumerate(gold_groups):
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                d = abs(g[i] - g[j])
                if texts is not None and texts[item][i] == texts[item][j]:
                    p = 1.0
                elif sigma <= 0:
                    p = 1.0 if d > 0 else 0.5
                else:
                    p = _phi(d / (sigma * math.sqrt(2.0)))
                total += p * p + (1 - p) * (1 - p)
                n += 1
    if n == 0:
        raise ValueError("no candidate pairs to calibrate on")
    return total / n


def calibrate_sigma(gold_groups: Sequence[Sequence[float]], target: float = INSTRUCTGPT_AGREEMENT,
                    texts: Sequence[Sequence[str]] | None = None) -> float:
    """The noise σ at which :func:`expected_agreement` equals ``target`` (bisection).

    Pass the candidates' ``texts`` whenever a policy may write one answer twice: copies always
    agree, so σ must be larger for the same overall agreement. Agreement falls monotonically from
    its σ = 0 value towards (1 + share of copy pairs) / 2 as σ grows. A target above the noise-free
    agreement (many exactly tied gold pairs) returns σ = 0; one below the floor cannot be reached.
    """
    if not 0.5 < target < 1.0:
        raise ValueError(f"target agreement must be in (0.5, 1), got {target}")
    if expected_agreement(gold_groups, 0.0, texts) <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while expected_agreement(gold_groups, hi, texts) > target:
        hi *= 2
        if hi > 1e6:
            raise ValueError(f"cannot reach the target agreement {target}: too many pairs are copies of one "
                             "text, which every labeler ties")
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_agreement(gold_groups, mid, texts) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class SimulatedLabeler:
    """One noisy judge of the gold preference."""

    name: str
    sigma: float
    gold: GoldFn
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.name}:{self.seed}")

    def rank(self, prompt: str, candidates: Sequence[tuple[str, str]]) -> list[list[str]]:
        """Tie groups best → worst for ``candidates`` = [(id, text), …]."""
        gold = list(self.gold([prompt] * len(candidates), [t for _, t in candidates]))
        perceived: dict[str, float] = {}
        by_text: dict[str, list[str]] = {}
        for (cid, text), g in zip(candidates, gold):
            if text in by_text:  # the same text twice: a person ties them
                by_text[text].append(cid)
                continue
            by_text[text] = [cid]
            perceived[cid] = g + self._rng.gauss(0.0, self.sigma)
        heads = sorted(perceived, key=lambda c: -perceived[c])
        groups = []
        for head in heads:
            text = next(t for c, t in candidates if c == head)
            groups.append(by_text[text])
        return groups


def pairwise_agreement(a: list[list[str]], b: list[list[str]]) -> float | None:
    """Share of candidate pairs that two rankings (tie groups) order the same way (ties included)."""
    ra = {c: i for i, g in enumerate(a) for c in g}
    rb = {c: i for i, g in enumerate(b) for c in g}
    ids = sorted(set(ra) & set(rb))
    agree = n = 0
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            x, y = ids[i], ids[j]
            sa = (ra[x] > ra[y]) - (ra[x] < ra[y])
            sb = (rb[x] > rb[y]) - (rb[x] < rb[y])
            agree += sa == sb
            n += 1
    return agree / n if n else None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    from rankloop.records import render_prompt

    return render_prompt(prompt)


def ensure_labelers(admin, project_id: int, names: Sequence[str], password: str) -> list:
    """Create (if needed) and invite the labeler accounts; return a logged-in client for each."""
    from rankloop.labeling.client import LabelingClient, LabelingError

    clients = []
    for name in names:
        try:
            admin.create_user(name, password, role="labeler")
        except LabelingError as e:
            if e.status not in (400, 409, 422):  # already exists from an earlier round or run
                raise
        try:
            admin.add_member(project_id, name)
        except LabelingError as e:
            if e.status not in (400, 409):
                raise
        c = LabelingClient(admin.http)
        c.login(name, password)
        clients.append(c)
    return clients


def round_robin_tasks(clients: Sequence, project_id: int) -> Iterator[tuple[int, dict]]:
    """Turns over ``clients`` (logged-in ``LabelingClient``s): yield ``(i, task)``, the next task of
    client ``i`` in ``project_id``, one task per client per turn, until none has a task left.

    A client whose queue is empty drops out; the caller submits each task before asking for the
    next, so the order of API calls is: next_task of 0, the caller's submit, next_task of 1, ...
    """
    active = list(range(len(clients)))
    while active:
        still = []
        for i in active:
            task = clients[i].next_task(project_id)
            if task is None:
                continue
            yield i, task
            still.append(i)
        active = still


def label_project(admin, project_id: int, labelers: Sequence[SimulatedLabeler], password: str,
                  on_submit: Callable[[], None] | None = None) -> dict:
    """Every simulated labeler works through its queue until the project has no task left.

    ``admin``: a ``LabelingClient`` logged in as an admin (any transport: in-process or HTTP).
    Labelers take turns, one task each, so items with ``overlap`` > 1 spread over them.
    Returns the counts and the app's own agreement figures.
    """
    clients = ensure_labelers(admin, project_id, [lab.name for lab in labelers], password)
    submitted = 0
    for i, task in round_robin_tasks(clients, project_id):
        cands = [(c["id"], c["text"]) for c in task["candidates"]]
        order = labelers[i].rank(_prompt_text(task["prompt"]), cands)
        # A fresh key per task: a retry of this very call would reuse it and be stored once.
        key = uuid.uuid5(uuid.NAMESPACE_URL, f"rankloop-sim/{project_id}/{task['task_id']}/{labelers[i].name}").hex
        clients[i].submit(task["task_id"], order, idempotency_key=key)
        submitted += 1
        if on_submit is not None:
            on_submit()
    out: dict = {"submitted": submitted, "labelers": len(labelers)}
    out.update({f"app_{k}": v for k, v in admin.agreement(project_id).items()})
    return out


# ---------------------------------------------------------------- demonstrators

WriteFn = Callable[[random.Random, str], str]


@dataclass
class SimulatedDemonstrator:
    """One noisy writer of answers: the perceived-best of ``drafts`` answers it could write (see
    the module docstring)."""

    name: str
    sigma: float
    gold: GoldFn
    write: WriteFn
    drafts: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.drafts < 1:
            raise ValueError(f"{self.name}: drafts must be at least 1, got {self.drafts}")
        self._rng = random.Random(f"{self.name}:{self.seed}")

    def demonstrate(self, prompt: str) -> str:
        """The answer this demonstrator submits for ``prompt``."""
        drafts = [self.write(self._rng, prompt) for _ in range(self.drafts)]
        gold = list(self.gold([prompt] * len(drafts), drafts))
        perceived = [g + self._rng.gauss(0.0, self.sigma) for g in gold]
        return drafts[max(range(len(drafts)), key=perceived.__getitem__)]


def demonstrate_project(admin, project_id: int, demonstrators: Sequence[SimulatedDemonstrator], password: str,
                        on_submit: Callable[[], None] | None = None) -> dict:
    """Every simulated demonstrator works through its queue of a demonstration project until no
    task is left, as ``label_project`` does for rankings (logged-in app users, one task each in
    turn, an idempotency key per task)."""
    clients = ensure_labelers(admin, project_id, [d.name for d in demonstrators], password)
    submitted = 0
    for i, task in round_robin_tasks(clients, project_id):
        if task.get("kind") != "demonstration":
            raise ValueError(f"project {project_id}: expected demonstration tasks, got {task.get('kind')!r}")
        text = demonstrators[i].demonstrate(_prompt_text(task["prompt"]))
        key = uuid.uuid5(uuid.NAMESPACE_URL,
                         f"rankloop-sim-demo/{project_id}/{task['task_id']}/{demonstrators[i].name}").hex
        clients[i].submit_demonstration(task["task_id"], text, edited_from=None, idempotency_key=key)
        submitted += 1
        if on_submit is not None:
            on_submit()
    return {"submitted": submitted, "demonstrators": len(demonstrators)}


def review_demonstrations(admin, project_id: int, gold: GoldFn, min_gold: float | None = None) -> dict:
    """The simulated reviewer: accept every pending demonstration, or (``min_gold`` set) reject
    those whose gold score is below it. Through the app's review API, as an admin would."""
    accepted = rejected = 0
    for demo in admin.demonstrations(project_id, review="pending"):
        ok = min_gold is None or next(iter(gold([_prompt_text(demo["prompt"])], [demo["response"]]))) >= min_gold
        admin.review_demonstration(demo["id"], "accepted" if ok else "rejected")
        accepted += ok
        rejected += not ok
    return {"reviewed_accepted": accepted, "reviewed_rejected": rejected}
