"""Plan, then draw: a prompt's layout written out as places before the image is drawn.

The grid world's generator draws each object well but puts it anywhere: position and colour attribution sit at
chance (docs/RESULTS.md), while the understanding path answers position questions once it has said where each
object is first ("Grounding"). The same chain on the generation side: the LLM writes the layout of a prompt as a
*placed description*, every object with its quadrant ("a red circle in the top left and a blue square in the top
right"), and the image is drawn from that. This module holds the layout language and its checks:

    placed_description(scene)     the scene's objects in reading order (or a given order), each with its place
    prompt_order(prompt, scene)   a prompt's scene's objects in the order the prompt names them
    PLAN_PREFIX + prompt          the planning request; its answer is a placed description
    plan_turns(prompt, draw, g)   a plan record's conversation, for a prompt in any phrasing
    parse_placed(text)            a placed description back into (colour, shape, place) triples
    scene_from_placed(text)       the scene a placed description states (each object centred in its cell)
    placed_matches(text, objects) whether objects (a scene's, or detections) are exactly the ones it states
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch

from harmon.prompts import PHRASE_SEPARATOR, join_phrases
from harmon.world.questions import PLACES, place_of
from harmon.world.scene import Scene, WorldConfig, WorldObject, noun_phrase

PLAN_PREFIX = "Plan the layout: "  # the planning request; the prompt to draw follows
PLACED_TRIES = 1000  # scenes drawn for one placed description (grid scenes nearly always have one)
# The order a placed description lists its objects in: "reading" (top left to bottom right), "any" (drawn at random)
# or, for a plan, "prompt" (the order the prompt names them, so that the plan copies the prompt's phrases in turn).
ORDERS = ("reading", "any", "prompt")
Placed = tuple[str, str, str]  # (colour, shape, place)


def orders_for(task: str) -> tuple[str, ...]:
    """The :data:`ORDERS` a world record task takes: placed drawings reading or any, plans all three, every other
    task reading only."""
    return {"placed": ORDERS[:2], "plan": ORDERS}.get(task, ORDERS[:1])


def check_order(task: str, order: str) -> None:
    """Raise ValueError unless a record of ``task`` takes ``order`` (:func:`orders_for`)."""
    if order not in orders_for(task):
        raise ValueError(f"order {order!r} does not apply to {task} records; they take {orders_for(task)}")


def shuffled(objects: Sequence[WorldObject], generator: torch.Generator) -> list[WorldObject]:
    """``objects`` in an order drawn from ``generator`` (the "any" order)."""
    return [objects[i] for i in torch.randperm(len(objects), generator=generator).tolist()]


def placed_description(scene: Scene, objects: Sequence[WorldObject] | None = None) -> str | None:
    """ "a red circle in the top left and a blue square in the bottom right": every object with its quadrant, in
    reading order, or in the order of ``objects`` (the scene's objects, reordered). None when the scene is empty, an
    object sits near a middle line, or two share a quadrant.

    Raises:
        ValueError: ``objects`` is not an ordering of the scene's objects.
    """
    if objects is not None and Counter(objects) != Counter(scene.objects):
        raise ValueError("objects must be the scene's own objects, reordered")
    places = [place_of(o, scene.image_size) for o in scene.objects]
    if not places or None in places or len(set(places)) < len(places):
        return None
    if objects is None:
        objects = [o for _, o in sorted(zip(places, scene.objects), key=lambda pair: PLACES.index(pair[0]))]
    return join_phrases([f"{noun_phrase(o.shape, o.color)} in the {place_of(o, scene.image_size)}" for o in objects])


def prompt_order(prompt: Mapping, scene: Scene) -> list[WorldObject]:
    """The objects of ``scene``, drawn for ``prompt`` by :func:`harmon.world.prompts.scene_for_prompt` or
    :func:`harmon.world.free.level_scene_for_prompt` (one per counted object of each ``include`` entry, in the
    entries' order), ordered as the prompt's text names the entries; the objects of one entry in reading order.

    Every prompt of the world's samplers, in canonical and in varied phrasings, names the entries in their order,
    except that a position prompt names its positioned object ("A left of B", the entry that carries ``position``,
    which GenEval lists second) first. The order comes from that structure, not from the words, so it holds for any
    wording of the same metadata.

    Raises:
        ValueError: the scene's objects do not match the prompt's entries.
    """
    entries = prompt.get("include", [])
    owner = [k for k, e in enumerate(entries) for _ in range(int(e["count"]))]
    if len(owner) != len(scene.objects) or any(
        o.shape != entries[k]["class"] or entries[k].get("color") not in (None, o.color)
        for o, k in zip(scene.objects, owner)
    ):
        raise ValueError(f"the scene's objects are not the ones prompt {prompt['prompt']!r} includes")
    named = sorted(range(len(entries)), key=lambda k: (0 if entries[k].get("position") else 1, k))
    at = {k: rank for rank, k in enumerate(named)}

    def key(pair: tuple[int, WorldObject]) -> tuple[int, int]:  # objects of one entry in reading order
        place = place_of(pair[1], scene.image_size)
        return at[pair[0]], PLACES.index(place) if place is not None else len(PLACES)

    return [o for _, o in sorted(zip(owner, scene.objects), key=key)]


def first_placed(draw: Callable[[], Scene], tries: int = PLACED_TRIES) -> tuple[Scene, str]:
    """The first scene from ``draw()`` that has a placed description, with it.

    Raises:
        ValueError: none of ``tries`` draws had one.
    """
    for _ in range(tries):
        scene = draw()
        said = placed_description(scene)
        if said is not None:
            return scene, said
    raise ValueError(f"no scene of {tries} draws had a placed description")


def plan_turns(
    prompt: Mapping, draw: Callable[[], Scene], generator: torch.Generator, order: str = "reading"
) -> list[dict[str, str]]:
    """A plan record's conversation: the request for ``prompt``'s layout and, as the answer, the placed description
    of the first scene from ``draw()`` (scenes drawn for the prompt) that has one, its objects listed in ``order``
    (:data:`ORDERS`; "any" draws the order from ``generator``)."""
    check_order("plan", order)
    scene, plan = first_placed(draw)
    if order != "reading":
        plan = placed_description(
            scene, prompt_order(prompt, scene) if order == "prompt" else shuffled(scene.objects, generator)
        )
    return [{"role": "user", "content": plan_request(prompt["prompt"])}, {"role": "assistant", "content": plan}]


def plan_request(prompt: str) -> str:
    """The user turn that asks for ``prompt``'s layout."""
    return PLAN_PREFIX + prompt


def parse_placed(text: str, config: WorldConfig | None = None) -> list[Placed] | None:
    """The (colour, shape, place) triples of a placed description, or None when ``text`` is not one: every phrase
    must be "<article> <colour> <shape> in the <place>" with a world colour and shape, each place at most once."""
    config = config or WorldConfig()
    phrases = PHRASE_SEPARATOR.split(text.strip().rstrip(".").strip().lower())
    pattern = re.compile(r"(?:an?|the)\s+(\w+)\s+(\w+)\s+in\s+the\s+(top|bottom)\s+(left|right)")
    out: list[Placed] = []
    for phrase in phrases:
        m = pattern.fullmatch(phrase.strip())
        if m is None or m.group(1) not in config.palette or m.group(2) not in config.shapes:
            return None
        out.append((m.group(1), m.group(2), f"{m.group(3)} {m.group(4)}"))
    if len({p for _, _, p in out}) < len(out):
        return None
    return out


def scene_from_placed(text: str, config: WorldConfig | None = None) -> Scene | None:
    """The scene a placed description states, each object as large as its cell allows and centred in it (the grid
    level's largest drawing), or None when ``text`` is not a placed description."""
    config = config or WorldConfig()
    triples = parse_placed(text, config)
    if triples is None:
        return None
    cell = config.image_size // 2
    size = min(config.max_size_px, cell - config.gap_px)
    objects = []
    for color, shape, place in triples:
        row, col = place.split()
        x0 = (cell if col == "right" else 0) + (cell - size) // 2
        y0 = (cell if row == "bottom" else 0) + (cell - size) // 2
        objects.append(WorldObject(shape=shape, color=color, bbox=(x0, y0, x0 + size, y0 + size)))
    return Scene(objects=tuple(objects), image_size=config.image_size)


def placed_matches(text: str, objects: Sequence, image_size: int, config: WorldConfig | None = None) -> bool:
    """Whether ``objects`` (a scene's WorldObjects or the detector's objects) are exactly what the placed
    description ``text`` states: the same (colour, shape, place) triples, nothing more, nothing less."""
    want = parse_placed(text, config)
    if want is None:
        raise ValueError(f"not a placed description: {text!r}")
    got = [(o.color, o.shape, place_of(o, image_size)) for o in objects]
    return Counter(got) == Counter(want)
