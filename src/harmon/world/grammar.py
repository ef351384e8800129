"""Language v2: many phrasings per intent for prompts, questions and descriptions, and a fixed held-out set.

Every text is built from slots, each with seen options (used in training) and, for some slots, held-out options
(never used in training; reported apart by ``harmon eval shapes --level ...``). A text of the ``held_out`` split
uses exactly one held-out option (one slot, drawn at random among those of its intent that have one); a text of the
``seen`` split uses none. Answers keep one format (Yes/No, digits, a capitalised colour name, the canonical
description), which the scorer judges exactly.

Seen phrasings (``{det}`` is "a"/"an" as the next word needs; shapes take any of their words, plurals add "s"):

    shape words     circle | disc | round shape;  square | block | square shape;  triangle | triangular shape
    frame           {x} | a photo of {x} | an image of {x} | a picture of {x} | draw {x} | show {x} | an image with {x}
    coloured object {det} {colour} {shape} | {det} {shape} that is {colour} | {det} {shape} in {colour}
    count           {n} {shapes} | exactly {n} {shapes}    ({n}: "two".."five" or "2".."5")
    coloured count  {n} {colour} {shapes} | {n} {shapes} that are {colour} | {n} {shapes} in {colour}
    two objects     {a} and {b} | {a} as well as {b} | {a} together with {b}
    relation        to the left of | left of | on the left side of; (right alike); above | over; below | under |
                    beneath
    existence       Is there {o} in the image? | Is there {o} in the picture? | Does the image contain {o}? |
                    Can you see {o}? | Do you see {o}? | Is there {o}?
    counting        How many {p} are there? | How many {p} are in the image? | Count the {p}. |
                    How many {p} do you see? | What is the number of {p}?   ({p}: shapes, coloured shapes, objects)
    colour          What color is the {s}? | What colour is the {s}? | Which color is the {s}? |
                    Tell me the color of the {s}. | Tell me which color the {s} is.
    position        Is the {a} {relation} the {b}? | Is the {a} located {relation} the {b}?
    describe        Describe the image. | Describe the picture. | What do you see? | What is in the image? |
                    List the objects in the image. | What objects are there?

Held-out phrasings (:data:`HELD_OUT`): each recombines words that training text uses, in an arrangement it never
uses, so a model that parses rather than matches templates can read them:

    frame           a picture with {x}
    coloured object {det} {shape} which is {colour};  coloured count: {n} {shapes} which are {colour}
    relation        on the left of | on the right of
    existence       Does the picture contain {o}? | Can you see {o} in the image?
    counting        How many {p} can you see? | Count the {p} in the picture.
    colour          Which colour is the {s}? | Tell me the colour of the {s}.
    position        Is the {a} {relation} the {b} in the image?
    describe        What is in the picture? | List the objects you see.

:func:`is_held_out_phrasing` recognises them (:data:`HELD_OUT_PATTERNS`); the data tests check that no training
text matches, that every held-out text does, and that every word of the held-out set occurs in training text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from harmon.world.sampling import choice
from harmon.world.scene import NUMBER_WORDS, article

SPLITS = ("seen", "held_out")
SHAPE_WORDS = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "block", "square shape"),
    "triangle": ("triangle", "triangular shape"),
}
SEEN: dict[str, tuple[str, ...]] = {
    "frame": (
        "{x}",
        "a photo of {x}",
        "an image of {x}",
        "a picture of {x}",
        "draw {x}",
        "show {x}",
        "an image with {x}",
    ),
    "object": ("{color} {shape}", "{shape} that is {color}", "{shape} in {color}"),
    "count": ("{n} {shapes}", "exactly {n} {shapes}"),
    "colored_count": ("{n} {color} {shapes}", "{n} {shapes} that are {color}", "{n} {shapes} in {color}"),
    "pair": ("{a} and {b}", "{a} as well as {b}", "{a} together with {b}"),
    "left of": ("to the left of", "left of", "on the left side of"),
    "right of": ("to the right of", "right of", "on the right side of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "existence": (
        "Is there {o} in the image?",
        "Is there {o} in the picture?",
        "Does the image contain {o}?",
        "Can you see {o}?",
        "Do you see {o}?",
        "Is there {o}?",
    ),
    "counting": (
        "How many {p} are there?",
        "How many {p} are in the image?",
        "Count the {p}.",
        "How many {p} do you see?",
        "What is the number of {p}?",
    ),
    "color": (
        "What color is the {s}?",
        "What colour is the {s}?",
        "Which color is the {s}?",
        "Tell me the color of the {s}.",
        "Tell me which color the {s} is.",
    ),
    "position": ("Is the {a} {rel} the {b}?", "Is the {a} located {rel} the {b}?"),
    "describe": (
        "Describe the image.",
        "Describe the picture.",
        "What do you see?",
        "What is in the image?",
        "List the objects in the image.",
        "What objects are there?",
    ),
}
HELD_OUT: dict[str, tuple[str, ...]] = {
    "frame": ("a picture with {x}",),
    "object": ("{shape} which is {color}",),
    "colored_count": ("{n} {shapes} which are {color}",),
    "left of": ("on the left of",),
    "right of": ("on the right of",),
    "existence": ("Does the picture contain {o}?", "Can you see {o} in the image?"),
    "counting": ("How many {p} can you see?", "Count the {p} in the picture."),
    "color": ("Which colour is the {s}?", "Tell me the colour of the {s}."),
    "position": ("Is the {a} {rel} the {b} in the image?",),
    "describe": ("What is in the picture?", "List the objects you see."),
}
COLOR_PATTERN = r"(?:red|green|blue|yellow|purple|orange)"  # the palette's names, in held-out patterns
HELD_OUT_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^a picture with\b",
        rf"\bwhich (?:is|are) {COLOR_PATTERN}\b",
        r"\bon the (?:left|right) of\b",
        r"^does the picture contain\b",
        r"^can you see .+ in the image\?$",
        r"^how many .+ can you see\?$",
        r"^count the .+ in the picture\.$",
        r"^which colour is\b",
        r"^tell me the colour of\b",
        r"^is the .+ in the image\?$",
        r"^what is in the picture\?$",
        r"^list the objects you see\.$",
    )
)


def matches_any(patterns: Sequence[re.Pattern], text: str) -> bool:
    """Whether one of ``patterns`` matches ``text`` lower-cased with its whitespace collapsed."""
    t = " ".join(text.strip().lower().split())
    return any(p.search(t) for p in patterns)


def is_held_out_phrasing(text: str) -> bool:
    """Whether ``text`` (one prompt, question or description) uses a held-out phrasing."""
    return matches_any(HELD_OUT_PATTERNS, text)


class Phraser:
    """Draws the options of one text. ``slots`` lists (key, slot) for every slot instance of the text (two objects
    are two instances of the slot "object"); in the ``held_out`` split one instance among those whose slot has
    held-out options is forced to a held-out option, every other instance takes a seen one. ``seen`` and
    ``held_out`` are the option tables (a subclass names its own, as :class:`harmon.world.edit_grammar.EditPhraser`
    does)."""

    seen: dict[str, tuple[str, ...]] = SEEN
    held_out: dict[str, tuple[str, ...]] = HELD_OUT

    def __init__(self, generator: torch.Generator, split: str, slots: Sequence[tuple[str, str]]) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown phrasing split {split!r}; expected one of {SPLITS}")
        held = [key for key, slot in slots if slot in self.held_out]
        if split == "held_out" and not held:
            raise ValueError(f"no held-out phrasing for slots {[slot for _, slot in slots]}")
        self.generator = generator
        self.forced = choice(generator, held) if split == "held_out" else None

    def pick(self, slot: str, key: str | None = None) -> str:
        """An option of ``slot`` for the slot instance ``key`` (default: the slot's name)."""
        if (key or slot) == self.forced:
            return choice(self.generator, self.held_out[slot])
        return choice(self.generator, self.seen[slot])

    def shape(self, shape: str, plural: bool = False) -> str:
        """One of the words for ``shape``."""
        word = choice(self.generator, SHAPE_WORDS[shape])
        return word + "s" if plural else word

    def number(self, n: int) -> str:
        """``n`` as digits or as a word, a fair coin."""
        return str(n) if float(torch.rand((), generator=self.generator)) < 0.5 else NUMBER_WORDS[n]


def with_article(phrase: str) -> str:
    """ "a red circle", "an orange disc", "an image ..." ."""
    return f"{article(phrase)} {phrase}"


def object_phrase(ph: Phraser, shape: str, color: str | None, key: str = "object") -> str:
    """ "a disc", "a red circle", "a circle that is red", "a block in orange" (with the article)."""
    if color is None:
        return with_article(ph.shape(shape))
    return with_article(ph.pick("object", key).format(color=color, shape=ph.shape(shape)))


def count_phrase(ph: Phraser, shape: str, n: int, color: str | None, key: str | None = None) -> str:
    """ "two squares", "exactly 3 discs", "2 red blocks", "four triangles that are blue"."""
    slot = "count" if color is None else "colored_count"
    return ph.pick(slot, key).format(n=ph.number(n), color=color, shapes=ph.shape(shape, plural=True))


def relation_phrase(ph: Phraser, rel: str) -> str:
    """A phrasing of GenEval relation ``rel`` ("left of", "right of", "above", "below")."""
    return ph.pick(rel, "relation")


def sentence(text: str) -> str:
    """``text`` with a capital first letter."""
    return text[:1].upper() + text[1:]
