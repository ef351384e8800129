"""The language of edit instructions: named places, seen and held-out phrasings, and the held-out recogniser.

An instruction is built from slots, as the prompts of :mod:`harmon.world.grammar` are: the edit's template, one
reference per object it names, and (add, move) a named place. In the ``seen`` split every slot takes a seen option;
in the ``held_out`` split exactly one slot instance, drawn among those that have held-out options, takes a held-out
one. Objects are named by colour and shape (any of the grammar's shape words), which the sampler keeps unique.

Seen phrasings (``{ref}`` names an object of the source, ``{obj}`` the object to add, ``{place}`` a named place):

    reference     the {colour} {shape} | the {shape} that is {colour}
    new object    {det} {colour} {shape} | {det} {shape} that is {colour}
    recolor       make {ref} {colour} | turn {ref} {colour} | paint {ref} {colour} | change the color of {ref} to
                  {colour} | recolor {ref} {colour}
    remove        remove {ref} | delete {ref} | erase {ref} | take away {ref} | get rid of {ref} |
                  remove {ref} from the image
    add           add {obj} {place} | put {obj} {place} | draw {obj} {place} | place {obj} {place} |
                  insert {obj} {place}
    move          move {ref} {place} | put {ref} {place} | shift {ref} {place} | place {ref} {place} |
                  move {ref} so that it is {place}
    swap_colors   swap the colors of {a} and {b} | switch the colors of {a} and {b} | exchange the colors of {a}
                  and {b} | give {a} the color of {b} and {b} the color of {a}
    change_shape  make {ref} {det} {shape} | turn {ref} into {det} {shape} | change {ref} into {det} {shape} |
                  replace {ref} with {det} {colour} {shape} | change the shape of {ref} to {det} {shape}

Held-out phrasings (:data:`HELD_OUT`), each recombining words that training text uses:

    reference     the {shape} which is {colour}   (the grammar's own held-out "which is")
    recolor       change the colour of {ref} to {colour} | paint {ref} in {colour}
    remove        take {ref} away | delete {ref} from the picture
    add, move     {place}, add {obj} | {place}, put {ref}   (the place first)
    swap_colors   swap the colours of {a} and {b} | make {a} and {b} swap colors
    change_shape  turn {ref} into {det} {colour} {shape}
    places        at the {v} {h} corner | on the {side} half | at the centre

Named places (:data:`PLACES`) are regions of the object's box centre (cx, cy) in an n-pixel image, h = n / 2:

    top left, top right, bottom left, bottom right   the quadrant: cx < h (left) or cx > h (right), and cy < h
                                                     (top) or cy > h (bottom)
    left, right, top, bottom                         the half: cx < h, cx > h, cy < h, cy > h
    center                                           |cx - h| < n / 8 and |cy - h| < n / 8 (free layout only: a grid
                                                     cell keeps every centre away from the middle)

The sampler puts an object it adds or moves with its centre ``place_margin_px`` (4 px at 64) inside the region, and
moves only objects whose centre lies at least that far outside it, so no label depends on a pixel; the scorer
accepts a detected centre anywhere inside the region (see :mod:`harmon.world.edits`).
"""

from __future__ import annotations

import re

from harmon.world.grammar import COLOR_PATTERN, Phraser, matches_any
from harmon.world.sampling import choice
from harmon.world.scene import article

EDIT_TYPES = ("recolor", "remove", "add", "move", "swap_colors", "change_shape")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
HALVES = ("left", "right", "top", "bottom")
PLACES = (*QUADRANTS, *HALVES, "center")
PLACE_MARGIN_FRAC = 4 / 64  # an added or moved centre sits 4 px (at 64) inside its region
CENTER_HALF_FRAC = 1 / 8  # the centre region: 8 px (at 64) either side of the middle

_VERTICAL = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_HALF_SEEN = {
    "left": ("on the left side", "on the left", "in the left half"),
    "right": ("on the right side", "on the right", "in the right half"),
    "top": ("at the top", "in the top half", "at the top of the image"),
    "bottom": ("at the bottom", "in the bottom half", "at the bottom of the image"),
}
SEEN: dict[str, tuple[str, ...]] = {
    "ref": ("the {color} {shape}", "the {shape} that is {color}"),
    "obj": ("{color} {shape}", "{shape} that is {color}"),
    "recolor": (
        "make {ref} {color}",
        "turn {ref} {color}",
        "paint {ref} {color}",
        "change the color of {ref} to {color}",
        "recolor {ref} {color}",
    ),
    "remove": (
        "remove {ref}",
        "delete {ref}",
        "erase {ref}",
        "take away {ref}",
        "get rid of {ref}",
        "remove {ref} from the image",
    ),
    "add": (
        "add {obj} {place}",
        "put {obj} {place}",
        "draw {obj} {place}",
        "place {obj} {place}",
        "insert {obj} {place}",
    ),
    "move": (
        "move {ref} {place}",
        "put {ref} {place}",
        "shift {ref} {place}",
        "place {ref} {place}",
        "move {ref} so that it is {place}",
    ),
    "swap_colors": (
        "swap the colors of {a} and {b}",
        "switch the colors of {a} and {b}",
        "exchange the colors of {a} and {b}",
        "give {a} the color of {b} and {b} the color of {a}",
    ),
    "change_shape": (
        "make {ref} {new}",
        "turn {ref} into {new}",
        "change {ref} into {new}",
        "replace {ref} with {new_colored}",
        "change the shape of {ref} to {new}",
    ),
    "quadrant": ("in the {v} {h} corner", "at the {v} {h}", "in the {v} {h}", "in the {v} {h} part of the image"),
    "center": ("in the center", "in the middle", "in the centre", "in the middle of the image"),
}
HELD_OUT: dict[str, tuple[str, ...]] = {
    "ref": ("the {shape} which is {color}",),
    "recolor": ("change the colour of {ref} to {color}", "paint {ref} in {color}"),
    "remove": ("take {ref} away", "delete {ref} from the picture"),
    "add": ("{place}, add {obj}",),
    "move": ("{place}, put {ref}",),
    "swap_colors": ("swap the colours of {a} and {b}", "make {a} and {b} swap colors"),
    "change_shape": ("turn {ref} into {new_colored}",),
    "quadrant": ("at the {v} {h} corner",),
    "half": ("on the {side} half",),
    "center": ("at the centre",),
}
HELD_OUT_EDIT_PATTERNS = tuple(
    re.compile(p)
    for p in (
        rf"\bwhich is {COLOR_PATTERN}\b",
        r"\bthe colours of\b|\bchange the colour of\b",
        rf"^paint .+ in {COLOR_PATTERN}$",
        r"^take the .+ away$",
        r"^delete .+ from the picture$",
        r"^(?:in|at|on) the [a-z ]+, (?:add|put)\b",
        r"^make .+ and .+ swap colors$",
        rf"^turn the .+ into an? {COLOR_PATTERN} ",
        r"\bat the (?:top|bottom|upper|lower) (?:left|right) corner\b",
        r"\bon the (?:left|right|top|bottom) half\b",
        r"\bat the centre\b",
    )
)


def is_held_out_edit_phrasing(text: str) -> bool:
    """Whether the edit instruction ``text`` uses a held-out phrasing (:data:`HELD_OUT`)."""
    return matches_any(HELD_OUT_EDIT_PATTERNS, text)


class EditPhraser(Phraser):
    """The grammar's :class:`~harmon.world.grammar.Phraser` over the edit instructions' option tables."""

    seen = SEEN
    held_out = HELD_OUT


def place_slot(place: str) -> str:
    """The slot that phrases ``place``: "quadrant", "half" or "center"."""
    if place in QUADRANTS:
        return "quadrant"
    if place in HALVES:
        return "half"
    if place == "center":
        return "center"
    raise ValueError(f"unknown place {place!r}; expected one of {PLACES}")


def place_phrase(ph: EditPhraser, place: str) -> str:
    """ "in the top left corner", "at the upper right", "on the left side", "in the middle", ..."""
    slot = place_slot(place)
    if slot == "half":
        if ph.forced == "place":
            return ph.pick("half", "place").format(side=place)
        return choice(ph.generator, _HALF_SEEN[place])
    text = ph.pick(slot, "place")
    if slot == "quadrant":
        v, h = place.split()
        return text.format(v=choice(ph.generator, _VERTICAL[v]), h=h)
    return text


def reference(ph: EditPhraser, color: str, shape: str, key: str = "ref") -> str:
    """ "the red circle", "the disc that is red" (held out: "the disc which is red")."""
    return ph.pick("ref", key).format(color=color, shape=ph.shape(shape))


def new_object(ph: EditPhraser, color: str, shape: str) -> str:
    """ "a red circle", "an orange block", "a disc that is green"."""
    words = ph.pick("obj").format(color=color, shape=ph.shape(shape))
    return f"{article(words)} {words}"


def with_det(words: str) -> str:
    """``words`` with its indefinite article."""
    return f"{article(words)} {words}"
