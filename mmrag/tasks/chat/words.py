"""Words of captions and questions: tokens, normal forms, word classes, question templates.

Shared by the ``split`` questioner (which asks about words), the caption-word features of
candidates, the answer-aware re-ranking and the simulated user, so that all of them read a word
the same way. Deliberately small and rule-based (no tagger model): lower-case, strip punctuation,
map a few synonyms and irregular plurals to one form, strip regular plural endings.
"""

from __future__ import annotations

import re
from functools import lru_cache

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")

STOPWORDS = frozenset("""
a an the and or but if of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where
why how all any both each few more most other some such no nor not only own same so than too very
s t can will just don should now is are was were be been being am do does did doing have has had
having i me my myself we our ours you your he him his she her it its they them their what which who
whom this that these those while as until because could would may might must shall also yet near
onto upon across along around behind beside besides beneath inside outside toward towards within
without via per one two three four five six seven eight nine ten several many much another lot lots
something someone somebody anything anyone anybody everything everyone thing things stuff
photo picture image pic photograph shot camera view scene visible see seen tell look looks looking
appear appears kind sort type color colour colored coloured yes yeah nope maybe probably possibly
like well get gets got go going being it's there's that's i'm don't can't isn't aren't
""".split())

#: Words that never make a question on their own (too generic to split candidates).
GENERIC = frozenset("""
person people man men woman women guy lady boy girl child children kid kids group top front back
side area while other something background foreground day time way
""".split())

#: Caption verbs in their third-person form, normalized ("a dog sits" -> "sit"): asked as actions
#: ("is there anyone who sits?"), never as if they were things ("is there a sit?").
VERBS = frozenset("""
sit stand run jump ride hold wear climb swim throw catch carry lie wait pull push kick eat sleep
lean dance sing chase splash stare laugh talk read skate crawl bite grab sniff lick
""".split())

COLORS = frozenset("""
black white red blue green yellow orange pink purple brown gray grey tan gold silver beige
""".split())

#: Common caption adjectives (asked as "is anything X?"); other non -ing words are asked as nouns.
ADJECTIVES = frozenset("""
young old little small large big tall short wet dry muddy dirty snowy sandy grassy rocky sunny dark
bright colorful striped spotted long bald blond blonde asian shirtless smiling happy empty crowded
busy wooden metal plastic red-haired curly fluffy furry shaggy
""".split()) | COLORS

#: Nouns used without an article ("is there snow?").
MASS_NOUNS = frozenset("""
water snow grass sand dirt mud rain ice air smoke fire food hair traffic graffiti equipment
""".split())

_IRREGULAR = {"men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
              "mice": "mouse", "geese": "goose", "people": "people", "dice": "die", "leaves": "leaf",
              "knives": "knife", "wolves": "wolf", "shelves": "shelf"}
_SYNONYMS = {"puppy": "dog", "puppies": "dog", "doggy": "dog", "guy": "man", "guys": "man",
             "kid": "child", "kids": "child", "colour": "color", "grey": "gray", "blonde": "blond",
             "t-shirt": "shirt", "tshirt": "shirt", "bike": "bicycle", "ocean": "sea"}
_NO_STRIP = ("ss", "us", "is", "ous", "ics")


@lru_cache(maxsize=65536)
def normalize(word: str) -> str:
    """One form per word: lower case, synonyms and irregular plurals mapped, plural -s dropped."""
    w = word.lower().strip("'")
    if w in _SYNONYMS:
        return _SYNONYMS[w]
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 3 and not w.endswith("ing") and w not in MASS_NOUNS:
        if w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith(("ches", "shes", "xes", "sses")):
            w = w[:-2]
        elif w.endswith("s") and not w.endswith(_NO_STRIP):
            w = w[:-1]
    return _SYNONYMS.get(w, w)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude stem for matching verb forms and plurals: running/runs/run -> run, rides -> rid."""
    w = normalize(word)
    for suf in ("ing", "ed", "es", "s", "e"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            w = w[: -len(suf)]
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]
    return w


def tokens(text: str) -> list[str]:
    """Lower-case word tokens of a text (punctuation dropped, hyphenated words split)."""
    return _TOKEN.findall(text.lower().replace("-", " "))


def content_words(text: str) -> list[str]:
    """Normalized non-stopword tokens, in order (duplicates kept)."""
    return [normalize(t) for t in tokens(text) if t not in STOPWORDS and len(t) > 1]


def content_set(text: str) -> set[str]:
    return set(content_words(text))


def word_class(word: str) -> str:
    """``color``, ``action`` (-ing), ``adjective`` or ``noun`` (the rest)."""
    if word in COLORS:
        return "color"
    if word.endswith("ing") and len(word) > 5:
        return "action"
    if word in ADJECTIVES:
        return "adjective"
    return "noun"


def askable(word: str) -> bool:
    """Whether the ``split`` questioner may ask about this (normalized) word."""
    return (len(word) > 2 and word not in STOPWORDS and word not in GENERIC and word.isalpha())


def _phrase(word: str) -> str:
    """A word as the object of "is there ...": "a dog", "snow", "anyone running", "anything red"."""
    cls = word_class(word)
    if cls == "action":
        return f"anyone {word}"
    if cls in ("color", "adjective"):
        return f"anything {word}"
    if word in MASS_NOUNS:
        return word
    if word in VERBS:
        return f"anyone who {_third_person(word)}"
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _third_person(verb: str) -> str:
    """"sit" -> "sits", "catch" -> "catches", "carry" -> "carries" (what :func:`normalize` undoes)."""
    if verb.endswith(("s", "sh", "ch", "x", "z")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def yes_no_question(word: str) -> str:
    """The question the ``split`` questioner asks about one word."""
    cls = word_class(word)
    if cls == "color":
        return f"is there anything {word} in the picture?"
    if cls == "action":
        return f"is anyone {word}?"
    if cls == "adjective":
        return f"does the picture show something {word}?"
    return f"is there {_phrase(word)}?"  # "a dog", "an apple", "snow"


def choice_question(*options: str) -> str:
    """The ``split`` questioner's choice question over two or more words ("is there a dog or
    anyone swimming?", "is there a dog, a ball or anyone swimming?"): :func:`choice_options`
    reads back the options in order, the simulated user answers the first option its captions
    mention, else "neither"."""
    if len(options) < 2:
        raise ValueError("a choice question needs at least two options")
    phrases = [_phrase(w) for w in options]
    return f"is there {', '.join(phrases[:-1])} or {phrases[-1]}?"


YES_NO_STARTS = frozenset("is are does do can was were has have could would will did any".split())
#: Words of question templates that are not what the question is about.
QUESTION_FRAME = frozenset("anyone anything something picture photo image there show".split())


def is_yes_no(question: str) -> bool:
    """A question answered by yes or no (starts like "is/are/does ..." and offers no choice)."""
    t = tokens(question)
    return bool(t) and t[0] in YES_NO_STARTS and "or" not in t[1:]


_CHOICE_TOKEN = re.compile(_TOKEN.pattern + "|,")  # words and commas


def choice_options(question: str) -> list[str]:
    """The options of a choice question, in order ("is it a boy or a girl?" -> [boy, girl];
    "is there a dog, a ball or anyone swimming?" -> [dog, ball, swimming]), else []. Each
    comma-separated part before "or" gives its last content word (back to the part that opens
    the question), the part after "or" its first."""
    t = _CHOICE_TOKEN.findall(question.lower().replace("-", " "))
    if not t or t[0] not in YES_NO_STARTS or "or" not in t[1:]:
        return []
    j = t.index("or", 1)
    parts: list[list[str]] = [[]]
    for w in t[:j]:
        if w == ",":
            parts.append([])
        else:
            parts[-1].append(w)
    parts = [p for p in parts if p]  # "is it sunny, or cloudy?": a comma before "or" ends no option
    before: list[str] = []
    for part in reversed(parts):
        words = [w for w in part if w not in STOPWORDS]
        if not words:
            break  # "is it, like, a boy or a girl?": stop at a part with no option
        before.insert(0, words[-1])
    after = [w for w in t[j + 1 :] if w != "," and w not in STOPWORDS]
    options = [normalize(w) for w in before + after[:1]]
    return options if len(options) >= 2 else []


def question_topic(question: str) -> str | None:
    """The word a yes/no question is about: its last content word (English questions end on
    the thing asked about: "is the man wearing a hat?" -> "hat"); None if it has none or the
    question is not a yes/no question."""
    if not is_yes_no(question):
        return None
    words = [w for w in content_words(question) if w not in QUESTION_FRAME]
    return words[-1] if words else None


def answer_polarity(answer: str) -> int:
    """+1 for a yes, -1 for a no, 0 for anything else (first word decides)."""
    t = tokens(answer)
    if not t:
        return 0
    if t[0] in ("yes", "yeah", "yep", "yup", "sure", "correct", "true"):
        return 1
    if t[0] in ("no", "nope", "not", "none", "false", "never", "neither"):
        return -1
    return 0


def choice_constraints(question: str, answer: str) -> list[tuple[str, int]]:
    """What the answer to a choice question says about its options, as (word, +1/-1): each
    option the answer names -> +1, and the options before the first one named -> -1 (a user
    checks them in order: "is there a dog or a cat?" "cat" -> (dog, -1), (cat, +1));
    "neither"/"no"/"none" -> every option -1; "both" (two options) -> both +1; anything else
    (e.g. "i don't know") -> nothing."""
    options = choice_options(question)
    if len(options) < 2 or len(set(options)) != len(options):
        return []
    said = set(content_words(answer))
    named = [k for k, o in enumerate(options) if o in said]
    if named:
        return [(o, -1) for o in options[: named[0]]] + [(options[k], 1) for k in named]
    if len(options) == 2 and "both" in tokens(answer):
        return [(o, 1) for o in options]
    if answer_polarity(answer) < 0:
        return [(o, -1) for o in options]
    return []
