"""General English text for training tiny tokenizers, made here from a seeded grammar.

A test tokenizer trained on the answers it is tested with turns every answer into one
``'▁Word'`` piece and hides the tokenizations real data hits: a lone ``'▁'`` before a digit or
a rare word, byte-fallback pieces for accents, CJK and emoji, capitalised words cut into
fragments. This corpus is everyday prose (stories, notes, dates, prices, dialogue), written
without looking at any task's answers, so the tokenizers trained on it split task words the
way a real Llama or Qwen vocabulary splits words it has seen rarely.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

_NAMES = "Anna Ben Clara David Elena Frank Grace Henry Iris Jack Laura Martin Nora Oscar Paul"
_PLACES = "London Paris Berlin Madrid Rome Vienna Oslo Dublin Lisbon Prague Boston Toronto"
_NOUNS = (
    "time year people way day man woman child world life hand part place case week company "
    "system program question work government number night point home water room mother area "
    "money story fact month lot right study book eye job word business issue side kind head "
    "house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door "
    "health person art war history party result change morning reason research girl guy moment "
    "air teacher force education food dog cat garden river road window table letter train "
    "market street village doctor student teacher paper music film song picture kitchen bread "
    "chat conversation user assistant answer computer machine language message reply image "
    "photo shape colour size corner edge center middle detail"
)
_VERBS = (
    "said made found took saw came thought looked wanted gave used told asked needed felt "
    "became left put meant kept began seemed helped showed heard played ran moved liked lived "
    "believed held brought wrote provided sat stood lost paid met included continued set "
    "learned led understood watched followed stopped created spoke read spent grew opened "
    "walked won offered remembered loved considered appeared bought waited served sent built"
)
_ADJECTIVES = (
    "good new first last long great little own other old right big high different small large "
    "next early young important few public bad same able late hard major better economic "
    "strong possible whole free military true federal international full special easy clear "
    "recent certain personal open local sure difficult simple quiet warm cold short curious "
    "helpful polite detailed artificial intelligent brief careful friendly"
)
_ADVERBS = "quickly slowly often never always really almost perhaps usually finally suddenly"
_TOPICS = (
    "the weather",
    "the new school",
    "a long journey",
    "the price of bread",
    "an old letter",
    "the football match",
    "the city council",
    "a family dinner",
    "the summer holiday",
    "the broken window",
)
# A little of what real corpora also hold; most characters outside it reach a tokenizer
# trained here only through byte fallback, as rare scripts do in Llama's vocabulary.
_FOREIGN = (
    "Le café était fermé.",
    "Das Mädchen läuft schnell.",
    "¿Dónde está la estación?",
    "Il a dit: « très bien ».",
    "São Paulo é grande.",
)
_MONTHS = "January February March April May June July August September October November December"


def general_text(num_lines: int = 3000, seed: int = 0) -> Iterator[str]:
    """Yield ``num_lines`` lines of everyday English prose; the same arguments, the same text."""
    rng = random.Random(seed)
    names, places = _NAMES.split(), _PLACES.split()
    nouns, verbs = _NOUNS.split(), _VERBS.split()
    adjectives, adverbs, months = _ADJECTIVES.split(), _ADVERBS.split(), _MONTHS.split()

    def noun_phrase() -> str:
        article = rng.choice(("the", "a", "my", "our", "this", "that"))
        if article == "a" and rng.random() < 0.5:
            article = "an old" if rng.random() < 0.3 else "a"
        adjective = f"{rng.choice(adjectives)} " if rng.random() < 0.5 else ""
        return f"{article} {adjective}{rng.choice(nouns)}"

    def sentence() -> str:
        name, place = rng.choice(names), rng.choice(places)
        kind = rng.randrange(10)
        if kind == 0:
            return f"In {rng.randint(1890, 2030)}, {name} moved to {place}."
        if kind == 1:
            return (
                f"On {rng.choice(months)} {rng.randint(1, 28)}, {name} {rng.choice(verbs)} "
                f"{noun_phrase()} at {rng.randint(1, 12)}:{rng.randint(0, 59):02d}."
            )
        if kind == 2:
            return (
                f"It cost ${rng.randint(1, 999)}.{rng.randint(0, 99):02d}, "
                f"about {rng.randint(2, 60)}% more than last year."
            )
        if kind == 3:
            return f'"{noun_phrase().capitalize()} is {rng.choice(adjectives)}," {name} said.'
        if kind == 4:
            return f"Why did {name} {rng.choice(adverbs)} talk about {rng.choice(_TOPICS)}?"
        if kind == 9 and rng.random() < 0.5:
            return (
                f"The {rng.choice(adjectives)} assistant gives {rng.choice(adjectives)} answers "
                f"to the user's questions about {rng.choice(_TOPICS)}."
            )
        if kind == 5:
            return (
                f"There were {rng.randint(2, 400)} {rng.choice(nouns)}s and "
                f"{rng.randint(2, 90)} {rng.choice(nouns)}s in {place}."
            )
        if kind == 6:
            return rng.choice(_FOREIGN)
        if kind == 7:
            items = rng.sample(nouns, 3)
            return f"We need: {items[0]}, {items[1]}; and {items[2]} (maybe)."
        return (
            f"{noun_phrase().capitalize()} {rng.choice(adverbs)} {rng.choice(verbs)} "
            f"{noun_phrase()} in {place}."
        )

    for _ in range(num_lines):
        yield " ".join(sentence() for _ in range(rng.randint(1, 3)))
