"""synthetic-stories: a byte-level language model on short stories drawn from a small grammar.

The stories have structure beyond byte frequencies: names recur and pronouns agree with them,
the weather decides what a character carries, verbs fit their objects, places fit activities,
and quotes open and close. A small Transformer learns this well past unigram statistics.
"""

from __future__ import annotations

import random

from esper_engine.tasks import STORY_SEPARATOR, Task, byte_lm_task

SEQ_LEN = 64
SIZES = {"default": (400_000, 40_000), "small": (16_000, 4_000)}  # bytes of train, validation text
# A small pre-LN Transformer under SGD (momentum 0.9) needs a larger step than the CNN: at 0.2 a
# 2-layer d=64 model reached ~0.3 nats/byte in 12x40 batches (0.1: ~0.6; unigram: 3.0).
HOST_LR = 0.2
SEED_LR = 0.2

NAMES = {
    "she": ("Lily", "Mia", "Sara", "Anna", "Zoe", "Lucy", "Emma", "Rosa", "Nina", "Ella"),
    "he": ("Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Tim", "Finn", "Noah", "Oscar"),
}
POSSESSIVE = {"she": "her", "he": "his"}
ANIMALS = ("cat", "dog", "rabbit", "bird", "bear", "fox", "frog", "duck", "mouse", "turtle")
CHILD = {"she": "little girl", "he": "little boy"}
TRAITS = ("kind", "brave", "shy", "curious", "happy", "clever", "gentle", "funny", "small")
# weather -> (what it makes a character bring, why)
WEATHER = {
    "rainy": ("umbrella", "to stay dry"),
    "sunny": ("hat", "to keep the sun away"),
    "windy": ("kite", "to fly it high"),
    "snowy": ("scarf", "to stay warm"),
    "cold": ("coat", "to stay warm"),
}
# activity -> (object it needs, places where it happens)
ACTIVITIES = {
    "kick": ("ball", ("park", "garden", "field")),
    "read": ("book", ("library", "garden", "park")),
    "sail": ("boat", ("river", "lake", "beach")),
    "build": ("sandcastle", ("beach",)),
    "paint": ("picture", ("garden", "school", "park")),
    "climb": ("tree", ("forest", "park", "hill")),
    "pick": ("flowers", ("garden", "field", "hill")),
}
LOST_THINGS = ("red ball", "blue hat", "toy car", "little drum", "shiny key", "favorite book")
HIDING_PLACES = (
    "under a big rock",
    "behind a tree",
    "in a bush",
    "under a bench",
    "near the water",
)
FEELINGS = ("happy", "glad", "proud", "excited")


def load(*, data_dir: str | None = None, seed: int = 0, scale: str = "default") -> Task:
    """Generate train and validation corpora from `seed` (data_dir is not used)."""
    n_train, n_val = SIZES[scale]
    train = corpus(random.Random(f"synthetic-stories/{seed}/train"), n_train)
    val = corpus(random.Random(f"synthetic-stories/{seed}/val"), n_val)
    # The report split: as much text as validation, from a stream of its own (generated apart).
    report = corpus(random.Random(f"synthetic-stories/{seed}/report"), n_val)
    return byte_lm_task(
        "synthetic-stories",
        train,
        val,
        seq_len=SEQ_LEN,
        host_lr=HOST_LR,
        seed_lr=SEED_LR,
        report_bytes=report,
    )


def corpus(rng: random.Random, n_bytes: int) -> bytes:
    """Stories, each ended by the separator byte, until at least n_bytes of text."""
    parts: list[bytes] = []
    size = 0
    while size < n_bytes:
        part = story(rng).encode("ascii") + STORY_SEPARATOR
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def character(rng: random.Random, avoid: str = "") -> dict[str, str]:
    """A name with agreeing pronouns and a description."""
    pronoun = rng.choice(("she", "he"))
    name = rng.choice([n for n in NAMES[pronoun] if n != avoid])
    kind = CHILD[pronoun] if rng.random() < 0.4 else rng.choice(ANIMALS)
    return {
        "name": name,
        "he": pronoun,
        "He": pronoun.capitalize(),
        "his": POSSESSIVE[pronoun],
        "kind": kind,
        "trait": rng.choice(TRAITS),
    }


def one_of(rng: random.Random, *options: str) -> str:
    return rng.choice(options)


def story(rng: random.Random) -> str:
    """One story: introduction, weather, a goal at a place, a friend in trouble, an ending."""
    a = character(rng)
    b = character(rng, avoid=a["name"])
    weather = rng.choice(list(WEATHER))
    gear, reason = WEATHER[weather]
    verb = rng.choice(list(ACTIVITIES))
    thing, places = ACTIVITIES[verb]
    place = rng.choice(places)
    lost = rng.choice(LOST_THINGS)
    spot = rng.choice(HIDING_PLACES)
    intro = one_of(
        rng,
        f"Once upon a time, there was a {a['trait']} {a['kind']} named {a['name']}.",
        f"{a['name']} was a {a['trait']} {a['kind']} who loved the {place}.",
        f"One day, a {a['trait']} {a['kind']} named {a['name']} woke up early.",
    )
    sentences = [
        intro,
        one_of(
            rng,
            f"It was a {weather} day, so {a['name']} took {a['his']} {gear} {reason}.",
            f"The sky said it was {weather}. {a['He']} took {a['his']} {gear} {reason}.",
        ),
        one_of(
            rng,
            f"{a['He']} wanted to {verb} the {thing} at the {place}.",
            f"{a['name']} went to the {place} to {verb} the {thing}.",
        ),
        one_of(
            rng,
            f"At the {place}, {a['he']} met {b['name']}, a {b['trait']} {b['kind']}.",
            f"There {a['he']} saw a {b['kind']} named {b['name']}.",
        ),
        f"{b['name']} was sad because {b['he']} lost {b['his']} {lost}.",
        one_of(
            rng,
            f'{a["name"]} said, "Do not worry, {b["name"]}. I will help you find it."',
            f'"Let us look for it together," said {a["name"]}.',
        ),
        one_of(
            rng,
            f"They looked and looked. The {lost} was {spot}!",
            f"{a['name']} looked {spot} and found the {lost}.",
        ),
        f'{b["name"]} was so {rng.choice(FEELINGS)}. "Thank you, {a["name"]}!" {b["he"]} said.',
        one_of(
            rng,
            f"Then {a['name']} and {b['name']} went to {verb} the {thing} together.",
            f"From that day on, {a['name']} and {b['name']} were best friends.",
            f"{a['name']} learned that helping a friend makes every day better.",
        ),
    ]
    return " ".join(sentences)
