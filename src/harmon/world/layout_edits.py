"""Edits through the layout: the grid world's language for editing by reading, rewriting and redrawing.

The generator does not carry an instruction to the cell it changes (docs/RESULTS.md, "Editing"), but the model
can say where each object is and can draw a layout it is given. The layout route of ``pipe.edit``
(:mod:`harmon.layout_edit`) chains what it can do: it reads the source's layout, rewrites it as the instruction
says, and redraws only the cells whose clause changed. Two record kinds teach the two text steps (grid level,
canonical phrasings; instructions in the edit grammar's seen phrasings):

    layout        an image and LAYOUT_REQUEST, answered with its placed description (reading order)
    layout_edit   text only: EDIT_LAYOUT_REQUEST filled with a source's placed description and an edit's
                  instruction, answered with the places that change and what each holds after it
                  (:func:`layout_changes_answer`: "nothing in the top right and an orange square in the bottom
                  left"); the places the answer leaves out keep their clause

The rewrite answers only the changes: written out whole, a layout's untouched clauses had to be copied, and the
small LLM swapped colours and shapes between them far more often than it got the edit wrong.

    layout_edit_named   as layout_edit, the answer first restating the clauses of the objects the instruction names
                        (in the order it names them), then NAMED_MARK, then the changes: "an orange square in the
                        top right -> nothing in the top right". Written first, the named object's canonical phrase
                        lets the place be copied from the clause that follows the same phrase in the layout.
"""

from __future__ import annotations

from typing import Any

import torch

from harmon.layout_edit import NAMED_MARK
from harmon.prompts import join_phrases
from harmon.world.edit_grammar import EDIT_TYPES
from harmon.world.edits import Edit, sample_edit
from harmon.world.planning import first_placed, placed_description
from harmon.world.questions import PLACES, place_of
from harmon.world.render import render
from harmon.world.sampling import choice, sample_scene
from harmon.world.scene import WorldConfig, noun_phrase

LAYOUT_REQUEST = "Describe the layout."
EDIT_LAYOUT_REQUEST = "Layout: {layout}. Instruction: {instruction}. What changes?"
NOTHING = "nothing"  # what a place holds after an edit empties it
EDIT_TRIES = 100  # edits drawn for one layout_edit record (nearly every grid edit has placed descriptions)
# the quadrants of each named half, in reading order: an object added or moved to a half goes to the first free one
HALVES = {
    "left": ("top left", "bottom left"),
    "right": ("top right", "bottom right"),
    "top": ("top left", "top right"),
    "bottom": ("bottom left", "bottom right"),
}


def _cells(scene) -> dict[str, tuple[str, str]] | None:
    """{quadrant: (colour, shape)} of a grid scene, or None when an object sits near a middle line."""
    out = {}
    for o in scene.objects:
        place = place_of(o, scene.image_size)
        if place is None or place in out:
            return None
        out[place] = (o.color, o.shape)
    return out


def _layout(cells: dict[str, tuple[str, str]]) -> str:
    """The placed description of ``cells`` in reading order (as :func:`placed_description` writes it)."""
    return join_phrases([f"{noun_phrase(cells[p][1], cells[p][0])} in the {p}" for p in PLACES if p in cells])


def target_cells(edit: Edit) -> dict[str, tuple[str, str]] | None:
    """The target's {quadrant: (colour, shape)}, one per instruction: an object added or moved to a half ("on the
    left side") goes to the half's first free quadrant in reading order, to a quadrant ("in the top left") as the
    target has it. None when a scene of the edit has no placed description."""
    source, target = _cells(edit.source), _cells(edit.target)
    if source is None or target is None or not target:
        return None
    if edit.edit_type in ("add", "move") and edit.place in HALVES:
        new = edit.target.objects[edit.target_index[0]]
        cells = dict(target)
        del cells[place_of(new, edit.target.image_size)]
        cells[next(p for p in HALVES[edit.place] if p not in cells)] = (new.color, new.shape)
        target = cells
    return target


def layout_answer(edit: Edit) -> str | None:
    """The target's placed description (:func:`target_cells`), or None."""
    cells = target_cells(edit)
    return None if cells is None else _layout(cells)


def layout_changes_answer(edit: Edit, named: bool = False) -> str | None:
    """The rewrite's answer: each place whose content the edit changes, in reading order, with what it holds after
    ("a blue circle in the top left", "nothing in the top right and a red square in the bottom left"); None when a
    scene of the edit has no placed description. ``named``: first the source clauses of the objects the instruction
    names and NAMED_MARK (an add names none: the changes alone)."""
    before, after = _cells(edit.source), target_cells(edit)
    if before is None or after is None:
        return None
    phrases = [
        f"{noun_phrase(after[p][1], after[p][0]) if p in after else NOTHING} in the {p}"
        for p in PLACES
        if before.get(p) != after.get(p)
    ]
    changes = join_phrases(phrases)
    if not named or not edit.source_index:
        return changes
    objects = [edit.source.objects[k] for k in edit.source_index]
    clauses = [f"{noun_phrase(o.shape, o.color)} in the {place_of(o, edit.source.image_size)}" for o in objects]
    return join_phrases(clauses) + NAMED_MARK + changes


def edit_layout_request(layout: str, instruction: str) -> str:
    """The user turn that asks for ``layout`` rewritten as ``instruction`` says."""
    return EDIT_LAYOUT_REQUEST.format(layout=layout, instruction=instruction)


def layout_record(g: torch.Generator, config: WorldConfig) -> dict[str, Any]:
    """An image and its layout asked for: ``{"kind": "image2text", "image", "conversation"}``."""
    scene, layout = first_placed(lambda: sample_scene(g, config))
    turns = [
        {"role": "user", "content": "<image>\n" + LAYOUT_REQUEST},
        {"role": "assistant", "content": layout},
    ]
    return {"kind": "image2text", "image": render(scene, config), "conversation": turns}


def layout_edit_record(g: torch.Generator, config: WorldConfig, named: bool = False) -> dict[str, Any]:
    """A layout rewritten by an edit of a uniformly drawn type (seen phrasings, training pairs): text only;
    ``named``: the answer restates the named objects' clauses first (:func:`layout_changes_answer`)."""
    for _ in range(EDIT_TRIES):
        edit = sample_edit(g, config, choice(g, EDIT_TYPES), "seen")
        source, answer = placed_description(edit.source), layout_changes_answer(edit, named)
        if source is not None and answer is not None:
            turns = [
                {"role": "user", "content": edit_layout_request(source, edit.instruction)},
                {"role": "assistant", "content": answer},
            ]
            return {"kind": "image2text", "image": None, "conversation": turns}
    raise ValueError(f"no edit of {EDIT_TRIES} draws had placed descriptions")
