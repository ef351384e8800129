"""Editing through the layout: read the image's layout, ask the model what the instruction changes, redraw that.

A model whose token grid holds one place per token (the shapes world's 2 x 2 grid: ``config.generation.plan_places``
in raster order) and that records the two requests of this route (``layout_request``, ``edit_layout_request``)
edits an image in three steps, each done by the model itself:

1. **read**: the answer to ``layout_request`` about the image, a layout of clauses "<object> in the <place>"
   (the grammar of :func:`harmon.chat.ordered_plan`);
2. **rewrite**: the answer to ``edit_layout_request`` filled with that layout and the instruction (text only): the
   places that change and what each holds after ("nothing in the top right and a red square in the bottom left");
   every other place keeps its clause;
3. **redraw**: the source's own VAE tokens are kept at every unchanged place; each changed place is masked and drawn
   again, one at a time in an order drawn from the generator, under the edited layout (its clauses in the places'
   order) and guidance, the others visible. A place that held an object before and holds one after, or that
   receives an object whose clause left another place (a move), starts its diffusion chain from that object's source
   token noised to ``strength`` (SDEdit, arXiv 2108.01073), which keeps its size and offset within the cell; a place
   that gains an object afresh, or loses one, is drawn from noise.

Every untouched place is the source's token exactly, so the edit keeps what it does not name up to what the VAE's
decoder lets neighbouring cells change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harmon.chat import answer_batch
from harmon.config import MAX_EDIT_CHECKS
from harmon.images import load_image, prepare_for_understanding, tokens_as
from harmon.prompts import PHRASE_SEPARATOR, generation_prompt, join_phrases, unconditional_prompt
from harmon.tokenizer import USER_TEXT
from harmon.validate import check_flag, check_number

if TYPE_CHECKING:
    from PIL import Image

    from harmon.pipeline import HarmonPipeline
    from harmon.sampling import SamplingSettings

logger = logging.getLogger(__name__)

LAYOUT_MAX_NEW_TOKENS = 96  # a four-object layout is about 45 tokens
NOTHING = "nothing"  # a place the rewrite empties
# A rewrite may first restate the clauses of the objects the instruction names, then this mark, then the changes
NAMED_MARK = " -> "
# settings of ``pipe.edit`` that only its direct route takes
DIRECT_ONLY = (
    "image_guidance_scale",
    "understanding_image_size",
    "num_iter",
    "cfg_schedule",
    "diffusion_steps_final",
    "detail_steps",
    "cond_refresh",
    "token_refresh",
    "token_ratio",
    "preset",
    "compile",
    "callback",
)


class LayoutError(ValueError):
    """The model's answer in the layout route is not a layout of its places."""


@dataclass(frozen=True)
class LayoutEdit:
    """What the route read and redraws: the layout before and after the edit (clauses in the places' order), the
    changed places' token indices and, for each changed index seeded from a source token, that token's index."""

    before: str
    after: str
    changed: tuple[int, ...]
    seeds: dict[int, int]


def as_image(image: Image.Image | str | Path) -> Image.Image:
    """``image`` as a PIL image, read from its path if it is one; TypeError naming the image for anything else."""
    from PIL import Image as PILImage

    if isinstance(image, (str, Path)):
        return load_image(image)
    if not isinstance(image, PILImage.Image):
        raise TypeError(f"image must be a PIL image or a path to one, got {type(image).__name__}")
    return image


def layout_route(pipe: HarmonPipeline, plan: bool | None, route_only: dict[str, Any], direct: dict[str, Any]) -> bool:
    """Whether ``pipe.edit`` takes the layout route: ``plan``, or when None, whether the model records one.

    Raises:
        ValueError: the layout route with a setting of the direct route in ``direct`` (name: value; None and False
            count as not given), or the direct route with a setting of ``route_only`` (strength, checks).
    """
    route = pipe.config.generation.edit_layout_request is not None if plan is None else check_flag("plan", plan)
    given = sorted(k for k, v in direct.items() if v is not None and v is not False)
    if route and given:
        raise ValueError(f"the layout route (plan=True) takes none of {given}; pass plan=False for them")
    own = sorted(k for k, v in route_only.items() if v is not None)
    if not route and own:
        verb = "applies" if len(own) == 1 else "apply"
        raise ValueError(f"{' and '.join(own)} {verb} only to the layout route (plan=True)")
    return route


def parse_layout(text: str, places: Sequence[str]) -> dict[str, str] | None:
    """{place: object phrase} of a layout ("a red circle in the top left and a blue square in the top right"), or
    None when some clause does not end in one of ``places`` or a place repeats. An empty layout ("nothing") is {};
    a clause may state that a place holds nothing ("nothing in the top left": phrase "nothing")."""
    text = text.strip().rstrip(".").strip()
    if not text or text.lower() == NOTHING:
        return {}
    out: dict[str, str] = {}
    for clause in PHRASE_SEPARATOR.split(text):
        match = next((p for p in places if clause.lower().endswith(f" in the {p}")), None)
        if match is None or match in out:
            return None
        out[match] = clause[: -len(f" in the {match}")].strip().lower()
    return out


def layout_changes(
    before: dict[str, str], after: dict[str, str], places: Sequence[str]
) -> tuple[tuple[int, ...], dict[int, int]]:
    """The places (token indices) whose clause differs, and the source token each redrawn place starts from (see
    the module docstring)."""
    changed = tuple(i for i, p in enumerate(places) if before.get(p) != after.get(p))
    seeds: dict[int, int] = {}
    for i in changed:
        now = after.get(places[i])
        if now is None:
            continue
        if places[i] in before:
            seeds[i] = i
            continue
        left = [k for k in changed if before.get(places[k]) == now and places[k] not in after]
        if left:
            seeds[i] = left[0]
    return changed, seeds


def read_layout(pipe: HarmonPipeline, image: Image.Image) -> str:
    """The model's layout of ``image``: its greedy answer to ``config.generation.layout_request``."""
    parts = [{"type": "image", "image": image}, {"type": "text", "text": pipe.config.generation.layout_request}]
    (layout,) = answer_batch(pipe, [[{"role": "user", "content": parts}]], max_new_tokens=LAYOUT_MAX_NEW_TOKENS)
    return layout.strip()


def rewrite_layout(pipe: HarmonPipeline, layout: str, instruction: str) -> str:
    """The model's answer to what ``instruction`` changes in ``layout``: the changed places' clauses (text only,
    greedy)."""
    template = pipe.config.generation.edit_layout_request
    request = template.format(layout=layout.strip().rstrip("."), instruction=instruction.strip())
    (after,) = answer_batch(pipe, [[{"role": "user", "content": request}]], max_new_tokens=LAYOUT_MAX_NEW_TOKENS)
    return after.strip()


def read_and_rewrite(pipe: HarmonPipeline, image: Image.Image, instruction: str) -> tuple[str, str]:
    """Steps 1 and 2: the model's layout of ``image`` and the changes ``instruction`` makes to it."""
    before = read_layout(pipe, image)
    return before, rewrite_layout(pipe, before, instruction)


def plan_edit(pipe: HarmonPipeline, image: Image.Image, instruction: str, grid: tuple[int, int]) -> LayoutEdit:
    """Steps 1 and 2 of the route: what the model reads and writes, and what it will redraw.

    Raises:
        ValueError: the model records no layout route, its token grid is not one token per place, or an answer is
            not a layout of its places (named in the message).
    """
    gen = pipe.config.generation
    if gen.edit_layout_request is None:
        raise ValueError(
            "this model does not edit through its layout (config.generation.edit_layout_request is unset: it was "
            "not trained to); use the direct route (plan=False)"
        )
    places = gen.plan_places
    if grid[0] * grid[1] != len(places):
        raise ValueError(f"the layout route needs one token per place: {len(places)} places, token grid {grid}")
    return edit_from_answers(*read_and_rewrite(pipe, image, instruction), places)


def stated_changes(said: str) -> str:
    """The changes a rewrite states: what follows NAMED_MARK where it first restates the named objects, else all of
    it."""
    return said.rsplit(NAMED_MARK, 1)[-1]


def edit_from_answers(before: str, said: str, places: Sequence[str]) -> LayoutEdit:
    """The edit that a read layout ``before`` and the rewrite's changes ``said`` make (steps 1 and 2's answers).

    Raises:
        LayoutError: an answer is not a layout of ``places``, or the read one states an empty place.
    """
    read, changes = parse_layout(before, places), parse_layout(stated_changes(said), places)
    for what, text, layout in (("read", before, read), ("rewritten", said, changes)):
        if layout is None:
            raise LayoutError(f"the model's {what} layout is not a layout of its places {places}: {text!r}")
    if NOTHING in read.values():
        raise LayoutError(f"the model's read layout states an empty place: {before!r}")
    after = {p: phrase for p, phrase in {**read, **changes}.items() if phrase != NOTHING}
    return LayoutEdit(layout_text(read, places), layout_text(after, places), *layout_changes(read, after, places))


def layout_text(layout: dict[str, str], places: Sequence[str]) -> str:
    """A parsed layout written out with its clauses in the order of ``places`` ("nothing" when empty), as the
    drawer reads layouts."""
    return join_phrases([f"{layout[p]} in the {p}" for p in places if p in layout]) or NOTHING


@torch.no_grad()
def redraw(
    pipe: HarmonPipeline,
    tokens: torch.Tensor,
    plan: LayoutEdit,
    settings: SamplingSettings,
    grid: tuple[int, int],
    strength: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Step 3 on one image's source tokens (1, L, C) on ``grid``: the changed places drawn again, the others
    kept."""
    model = pipe.model
    guided = settings.guidance_scale != 1.0
    seqs = [pipe.encode_prompt(generation_prompt(USER_TEXT), plan.after)]
    seqs += [pipe.encode_prompt(unconditional_prompt())] * guided
    ids, mask = pipe.pad_prompts(seqs)
    rows = ids.shape[0]
    source, tokens = tokens.clone(), tokens.clone()
    unknown = torch.zeros(1, tokens.shape[1], dtype=torch.bool, device=tokens.device)
    unknown[0, list(plan.changed)] = True
    order = [i for i in torch.randperm(tokens.shape[1], generator=generator).tolist() if i in plan.changed]
    for i in order:
        x_enc = model.forward_mae_encoder(
            tokens.expand(rows, -1, -1), unknown.expand(rows, -1), grid, mask, input_ids=ids
        )
        z = model.mar.forward_decoder(x_enc, unknown.expand(rows, -1), grid)[:, i]  # (rows, D)
        seed = plan.seeds.get(i)
        new = model.mar.diffloss.sample(
            z,
            temperature=settings.temperature,
            cfg=settings.guidance_scale,
            generator=generator,
            num_steps=settings.num_sampling_steps,
            x0_clip=settings.x0_clip,
            init=None if seed is None else source[:, seed].float(),
            strength=strength if seed is not None else 1.0,
        )  # (1, C)
        tokens[0, i] = new[0].to(tokens.dtype)
        unknown[0, i] = False
    return tokens


def source_tokens(pipe: HarmonPipeline, image: Image.Image, size: int) -> torch.Tensor:
    """The VAE tokens (1, L, C) of ``image`` prepared as the read step sees it (padded to a gray square, resized to
    ``size``), so that both steps put every object in the same place."""
    return pipe.model.encode_images(prepare_for_understanding(image, size).to(pipe.device))


def checked_redraw(
    pipe: HarmonPipeline,
    tokens: torch.Tensor,
    plan: LayoutEdit,
    settings: SamplingSettings,
    grid: tuple[int, int],
    strength: float,
    generator: torch.Generator | None,
    checks: int = 1,
) -> torch.Tensor:
    """Step 3 drawn ``checks`` times, each draw read back by the model (``layout_request``). Kept: the draw that
    agrees with the edited layout at the most places and, among equals, changes least, its seeded places nearest
    their seed tokens (the smallest edit that the model reads as asked)."""
    places = pipe.config.generation.plan_places
    wanted = parse_layout(plan.after, places)
    best, best_key = None, None
    for _ in range(checks):
        drawn = redraw(pipe, tokens, plan, settings, grid, strength, generator)  # (1, L, C)
        if checks == 1:
            return drawn
        read = parse_layout(read_layout(pipe, tokens_as(pipe.model, drawn, grid, "pil")[0]), places) or {}
        agree = sum(read.get(p) == wanted.get(p) for p in places)
        moved = sum(float((drawn[0, i] - tokens[0, s]).float().square().sum()) for i, s in plan.seeds.items())
        logger.debug("layout route: a draw reads as %s (%d of %d places as planned)", read, agree, len(places))
        if best_key is None or (-agree, moved) < best_key:
            best, best_key = drawn, (-agree, moved)
    return best


def draw_edit(
    pipe: HarmonPipeline,
    image: Image.Image,
    plan: LayoutEdit,
    settings: SamplingSettings,
    size: int,
    strength: float,
    *,
    checks: int = 1,
    num_images: int = 1,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
) -> list[Image.Image] | torch.Tensor:
    """Step 3 for ``num_images`` draws of one image at ``size``, each the best of ``checks`` read back
    (:func:`checked_redraw`): its tokens redrawn as ``plan`` says, returned as ``output_type`` asks
    (:func:`harmon.images.tokens_as`)."""
    grid = pipe.model.grid_for(size)
    tokens = source_tokens(pipe, image, size)
    drawn = [checked_redraw(pipe, tokens, plan, settings, grid, strength, generator, checks) for _ in range(num_images)]
    return tokens_as(pipe.model, torch.cat(drawn), grid, output_type)


def edit_by_layout(
    pipe: HarmonPipeline,
    image: Image.Image | str,
    instruction: str,
    settings: SamplingSettings,
    size: int,
    *,
    strength: float | None = None,
    checks: int | None = None,
    num_images: int = 1,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
) -> list[Image.Image] | torch.Tensor:
    """The route of ``pipe.edit(..., plan=True)``: ``num_images`` edits of one image (see the module docstring);
    ``strength`` and ``checks`` default to the model's ``edit_strength`` and ``edit_checks``."""
    image = as_image(image)
    gen = pipe.config.generation
    strength = gen.edit_strength if strength is None else strength
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    checks = (
        gen.edit_checks if checks is None else check_number("checks", checks, low=1, high=MAX_EDIT_CHECKS, integer=True)
    )
    plan = plan_edit(pipe, image, instruction, pipe.model.grid_for(size))
    logger.info("layout read: %r; rewritten: %r; redrawn places: %s", plan.before, plan.after, list(plan.changed))
    draw = {"checks": checks, "num_images": num_images, "generator": generator, "output_type": output_type}
    return draw_edit(pipe, image, plan, settings, size, strength, **draw)
