"""The embedded default task: a generated corpus of short answers, and the hidden "gold" preference.

rankloop's quickstart needs nothing from outside, so it writes its own world: questions about a
dozen topics ("Q: tell me about the garden.\\nA:") answered by short texts that vary in

- **tone**: warm and polite, neutral, negative, or rude;
- **relevance**: sentences about the asked topic, or about some other topic;
- **length**: one to seven sentences;
- **repetition**: now and then a sentence or a word said again and again.

A small causal LM pre-trained on this corpus writes the same mix, so its K candidates for one
prompt differ in ways a person would care about.

The gold preference
-------------------
The simulated labelers (``rankloop.simulate``) rank candidates by a documented scoring function of
the text, :func:`gold_score`, plus noise. It is the "true human preference" of the quickstart; the
reward model never sees it, only the noisy rankings. For a response ``r`` to a prompt about topic
``t``::

    gold(r) = 1.0 · tanh((pos(r) − neg(r)) / 2)        tone, saturating after ~3 kind words
            + 1.0 · relevance(r, t)                    share of sentences that mention topic t
            − 0.5 · min(1, |words(r) − 18| / 18)       length near 18 words
            − 2.0 · repetition(r)                      share of repeated word bigrams
            − 0.5 · [no sentence ends]                 the answer trails off unfinished

``pos``/``neg`` count words of the lexicons :data:`POSITIVE` and :data:`NEGATIVE`. Each term is
something a small reward model can pick up from text, and something PPO can move. The tone term
saturates while a reward model that learned "kind words are good" keeps paying for more of them,
and piling up kind words costs length and repetition: a proxy reward pushed far enough rises
while the gold score falls — the over-optimisation of Gao et al. (2022) shows on this task.

Everything here is plain Python (no torch): the labeling side may import it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from rankloop.records import Prompt

# ---------------------------------------------------------------- the world

TOPICS: dict[str, list[str]] = {
    "cats": ["cat", "cats", "kitten", "fur", "purr", "paws", "whiskers", "mice"],
    "dogs": ["dog", "dogs", "puppy", "bark", "leash", "bone", "tail", "walk"],
    "garden": ["garden", "flowers", "roses", "seeds", "soil", "tomatoes", "bees", "leaves"],
    "weather": ["weather", "rain", "sun", "clouds", "wind", "snow", "storm", "sky"],
    "food": ["food", "bread", "soup", "cheese", "apples", "dinner", "cake", "tea"],
    "music": ["music", "song", "songs", "piano", "guitar", "drums", "band", "melody"],
    "travel": ["travel", "train", "trip", "map", "hotel", "city", "road", "ticket"],
    "school": ["school", "teacher", "class", "books", "lesson", "homework", "pencil", "desk"],
    "ocean": ["ocean", "sea", "waves", "fish", "boat", "beach", "sand", "shells"],
    "space": ["space", "stars", "moon", "planet", "rocket", "comet", "orbit", "galaxy"],
    "football": ["football", "ball", "team", "goal", "match", "coach", "field", "players"],
    "coffee": ["coffee", "cup", "beans", "mug", "milk", "morning", "espresso", "cafe"],
}

POSITIVE: frozenset[str] = frozenset(
    "good great lovely wonderful nice happy kind beautiful bright friendly gentle warm "
    "glad thank thanks please love enjoy fun calm delightful sweet".split()
)
NEGATIVE: frozenset[str] = frozenset(
    "bad awful terrible boring sad ugly hate dull gloomy nasty annoying horrible "
    "stupid dumb useless worst angry cold".split()
)

_POS_ADJ = ["good", "great", "lovely", "wonderful", "nice", "beautiful", "bright", "friendly", "gentle", "warm",
            "delightful", "sweet", "calm"]
_NEG_ADJ = ["bad", "awful", "terrible", "boring", "ugly", "dull", "gloomy", "nasty", "annoying", "horrible",
            "useless", "cold"]
_NEU_ADJ = ["small", "big", "old", "new", "brown", "green", "round", "quiet", "busy", "long", "short", "usual"]
_PLACES = ["at home", "in the town", "near the river", "by the window", "in the morning", "after lunch",
           "at night", "on sunday", "every day", "in winter", "in spring", "with friends"]

_QUESTIONS = [
    "tell me about {t}.",
    "what do you think of {t}?",
    "write a few words on {t}.",
    "describe {t} for me.",
    "say something about {t}.",
    "can you talk about {t}?",
    "give me a short note on {t}.",
    "how do you feel about {t}?",
]

_POS_SENT = [
    "the {n} is {p}.",
    "i love the {n}, it is so {p}.",
    "{n} makes me happy.",
    "thank you for asking about the {n}.",
    "the {n} is {p} and {p2} {w}.",
    "i enjoy the {n} {w}.",
    "what a {p} {n}.",
    "please enjoy the {n}, it is {p}.",
]
_NEU_SENT = [
    "the {n} is {a}.",
    "there is a {a} {n} {w}.",
    "the {n} and the {n2} are {a}.",
    "i saw the {n} {w}.",
    "people talk about the {n} {w}.",
    "a {n} is a {n}.",
]
_NEG_SENT = [
    "the {n} is {q}.",
    "i hate the {n}, it is so {q}.",
    "the {n} makes me sad.",
    "the {n} is {q} and {q2} {w}.",
    "what a {q} {n}.",
    "nobody likes the {n} {w}.",
]
_RUDE_SENT = [
    "that is a stupid question.",
    "go away.",
    "i do not care about the {n}.",
    "stop asking me about the {n}, it is dumb.",
    "this is useless.",
]

TONES = ("positive", "neutral", "negative", "rude")
_TONE_WEIGHTS = (0.3, 0.3, 0.25, 0.15)


@dataclass(frozen=True)
class Example:
    """One corpus text: the prompt, the response and the attributes it was generated with."""

    topic: str
    prompt: str
    response: str
    tone: str


def format_prompt(question: str) -> str:
    """The prompt text as the model sees it; the response follows after ``A:``."""
    return f"Q: {question}\nA:"


def all_questions() -> list[tuple[str, str]]:
    """Every (topic, question) pair of the world, in a fixed order."""
    return [(t, q.format(t=t)) for t in TOPICS for q in _QUESTIONS]


def _sentence(rng: random.Random, tone: str, nouns: list[str]) -> str:
    n, n2 = rng.choice(nouns), rng.choice(nouns)
    fill = dict(n=n, n2=n2, w=rng.choice(_PLACES),
                p=rng.choice(_POS_ADJ), p2=rng.choice(_POS_ADJ),
                q=rng.choice(_NEG_ADJ), q2=rng.choice(_NEG_ADJ), a=rng.choice(_NEU_ADJ))
    pool = {"positive": _POS_SENT, "neutral": _NEU_SENT, "negative": _NEG_SENT, "rude": _RUDE_SENT}[tone]
    return rng.choice(pool).format(**fill)


def generate_response(rng: random.Random, topic: str, tone: str | None = None) -> tuple[str, str]:
    """A response to a question about ``topic``: (text, tone)."""
    tone = tone or rng.choices(TONES, _TONE_WEIGHTS)[0]
    on_topic = rng.random()  # how much of the answer stays on the asked topic
    n_sent = rng.choice([1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7])
    others = [t for t in TOPICS if t != topic]
    sentences = []
    for _ in range(n_sent):
        nouns = TOPICS[topic] if rng.random() < on_topic else TOPICS[rng.choice(others)]
        # Mixed answers: a minority of sentences take another tone.
        s_tone = tone if rng.random() < 0.75 else rng.choice(TONES[:3])
        sentences.append(_sentence(rng, s_tone, nouns))
    r = rng.random()
    if r < 0.08 and sentences:  # a sentence said again and again
        sentences = sentences + [sentences[-1]] * rng.randint(2, 4)
    elif r < 0.14:  # a word stuck on repeat
        w = rng.choice(TOPICS[topic] + _POS_ADJ)
        sentences.append(" ".join([w] * rng.randint(3, 8)) + ".")
    return " " + " ".join(sentences), tone


def write_answer(rng: random.Random, prompt: str) -> str:
    """An answer a simulated demonstrator could write to ``prompt`` (``rankloop.simulate``): one of
    the corpus's own, about the prompt's topic."""
    topic = topic_of(prompt)
    if topic is None:
        raise ValueError(f"write_answer: the prompt names none of the corpus's topics ({', '.join(TOPICS)}): "
                         f"{prompt[:80]!r}")
    return generate_response(rng, topic)[0]


def generate_corpus(n: int, seed: int = 0) -> list[Example]:
    """``n`` prompt/response examples over every question of the world."""
    rng = random.Random(seed)
    questions = all_questions()
    out = []
    for _ in range(n):
        topic, q = rng.choice(questions)
        response, tone = generate_response(rng, topic)
        out.append(Example(topic=topic, prompt=format_prompt(q), response=response, tone=tone))
    return out


def make_prompts(seed: int = 0, n_train: int = 64, n_eval: int = 32) -> tuple[list[Prompt], list[Prompt]]:
    """Training and held-out prompts: disjoint (topic, question) pairs.

    ``meta.topic`` carries the topic the gold preference judges relevance by.
    """
    rng = random.Random(seed)
    questions = all_questions()
    rng.shuffle(questions)
    n_eval_q = max(1, len(questions) // 4)
    eval_q, train_q = questions[:n_eval_q], questions[n_eval_q:]

    def take(pool: list[tuple[str, str]], n: int, prefix: str) -> list[Prompt]:
        items = [pool[i % len(pool)] for i in range(n)]
        return [Prompt(id=f"{prefix}{i:04d}", text=format_prompt(q), meta={"topic": t})
                for i, (t, q) in enumerate(items)]

    return take(train_q, n_train, "train-"), take(eval_q, n_eval, "eval-")


# ---------------------------------------------------------------- the gold preference

_WORD = re.compile(r"[a-z']+")
TARGET_WORDS = 18


def topic_of(prompt: str | Prompt) -> str | None:
    """The topic a prompt asks about (from ``meta.topic``, else from its text)."""
    if isinstance(prompt, Prompt):
        if "topic" in prompt.meta:
            return str(prompt.meta["topic"])
        prompt = prompt.text or ""
    question = prompt.split("\n")[0].lower()
    for t in TOPICS:
        if re.search(rf"\b{t}\b", question):
            return t
    return None


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"[.!?]+", text) if _WORD.search(s)]


def gold_terms(prompt: str | Prompt, response: str) -> dict[str, float]:
    """The terms of :func:`gold_score` (see the module docstring), for reports and tests."""
    words = _WORD.findall(response.lower())
    n = len(words)
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    topic = topic_of(prompt)
    vocab = set(TOPICS.get(topic or "", [])) | ({topic} if topic else set())
    sents = _sentences(response.lower())
    relevance = (sum(any(w in vocab for w in _WORD.findall(s)) for s in sents) / len(sents)) if sents else 0.0
    bigrams = list(zip(words, words[1:]))
    repetition = (1 - len(set(bigrams)) / len(bigrams)) if bigrams else 0.0
    unfinished = 0.0 if re.search(r"[.!?]\s*$", response) else 1.0
    return {
        "tone": math.tanh((pos - neg) / 2),
        "relevance": relevance,
        "length": min(1.0, abs(n - TARGET_WORDS) / TARGET_WORDS),
        "repetition": repetition,
        "unfinished": unfinished,
        "words": float(n),
    }


GOLD_WEIGHTS = {"tone": 1.0, "relevance": 1.0, "length": -0.5, "repetition": -2.0, "unfinished": -0.5}


def gold_score(prompt: str | Prompt, response: str) -> float:
    """The hidden "true" preference of the quickstart task: higher is better (about −4 … 2)."""
    terms = gold_terms(prompt, response)
    return sum(w * terms[k] for k, w in GOLD_WEIGHTS.items())


def gold_scores(prompts: list[str] | list[Prompt], responses: list[str]) -> list[float]:
    """Batched :func:`gold_score`; also usable as a programmatic PPO reward ``(prompts, responses)``."""
    return [gold_score(p, r) for p, r in zip(prompts, responses)]
