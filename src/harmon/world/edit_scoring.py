"""The exact scorer of edits: did the edited image do what the instruction asked, and keep everything else?

Inputs: an :class:`harmon.world.edits.Edit` and the objects detected in the edited image
(:func:`harmon.world.detect2.detect_objects_v2`, at the scene's size). Tolerances, at 64 px (they scale with the
image):

    same place  the detected box centre is within ``POSITION_TOL_FRAC`` (4 px) of the expected one along x and along
                y. Two objects of a scene are at least 13 px apart along one axis (10 px objects, a 3 px gap), so a
                detection is near at most one expected object and nearest-first matching is exact.
    same size   the detected box's longer side is within ``SIZE_TOL_FRAC`` (3 px) of the expected side (an
                anti-aliased edge moves each side of a box by at most 1 px).
    in a place  the detected centre lies strictly inside the named region (:func:`harmon.world.edits.in_place`);
                the sampler put it 4 px inside, so 4 px of drift are forgiven there too.

``preserved``: every object the edit does not touch is found at its place with its colour, shape and size, and no
detection is left unexplained (an extra object). Detections the edit explains, whatever they show, are not extras:
the object(s) at the edited object's place, and, for add / move / remove, detections of the edited (colour, shape)
(one for add and move). So the untouched source is always preserved, and a wrong edit costs ``edit_ok`` only.

``edit_ok`` per type:
    recolor, change_shape, swap_colors  at each edited object's place there is an object of the target colour and
                                        shape and the same size;
    remove                              nothing at the removed object's place, and no object of its colour and shape;
    add                                 an object of the added colour and shape with its centre in the named place;
    move                                nothing left at the old place, and an object of the moved colour, shape and
                                        size with its centre in the named place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harmon.world.detection import DetectedObject
from harmon.world.edits import Edit, in_place
from harmon.world.scene import WorldObject

POSITION_TOL_FRAC = 4 / 64  # same place: centres within 4 px (at 64) along x and y
SIZE_TOL_FRAC = 3 / 64  # same size: longer box sides within 3 px (at 64)


@dataclass(frozen=True)
class EditScore:
    """The two verdicts of one edited image (see the module docstring)."""

    edit_ok: bool
    preserved: bool


class _Matcher:
    """The detections of one image, claimed one by one by the expected objects that explain them."""

    def __init__(self, detections: Sequence[DetectedObject], image_size: int) -> None:
        self.detections = list(detections)
        self.free = set(range(len(self.detections)))
        self.pos_tol = POSITION_TOL_FRAC * image_size
        self.size_tol = SIZE_TOL_FRAC * image_size

    def at(self, center: tuple[float, float]) -> DetectedObject | None:
        """Claim the free detection nearest ``center`` within the position tolerance (None if there is none)."""
        near = [
            (max(abs(d.center[0] - center[0]), abs(d.center[1] - center[1])), j)
            for j, d in ((j, self.detections[j]) for j in self.free)
        ]
        near = [(dist, j) for dist, j in near if dist <= self.pos_tol]
        if not near:
            return None
        j = min(near)[1]
        self.free.remove(j)
        return self.detections[j]

    def same_size(self, d: DetectedObject, o: WorldObject) -> bool:
        return abs(max(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) - max(o.width, o.height)) <= self.size_tol

    def same(self, d: DetectedObject | None, o: WorldObject) -> bool:
        """Whether detection ``d`` shows ``o``: its colour, shape and size (the place was matched already)."""
        return d is not None and d.pair == o.pair and self.same_size(d, o)

    def claim_pair(self, pair: tuple[str, str], prefer=lambda d: True) -> list[DetectedObject]:
        """Claim every free detection of ``pair``; those passing ``prefer`` come first."""
        found = sorted(
            (j for j in self.free if self.detections[j].pair == pair), key=lambda j: not prefer(self.detections[j])
        )
        self.free -= set(found)
        return [self.detections[j] for j in found]

    def release(self, found: list[DetectedObject]) -> None:
        """Give claimed detections back (they become extras unless claimed again)."""
        self.free |= {j for j, d in enumerate(self.detections) if any(d is f for f in found)}


def score_edit(edit: Edit, detections: Sequence[DetectedObject]) -> EditScore:
    """``edit_ok`` and ``preserved`` of an edited image whose detected objects are ``detections``."""
    n = edit.target.image_size
    m = _Matcher(detections, n)
    target = edit.target.objects
    kept = [o for k, o in enumerate(target) if k not in edit.target_index]
    kept_verdicts = [m.same(m.at(o.center), o) for o in kept]  # every kept object claims its detection first
    kept_ok = all(kept_verdicts)
    if edit.edit_type in ("recolor", "change_shape", "swap_colors"):
        verdicts = [m.same(m.at(target[k].center), target[k]) for k in edit.target_index]  # each claims its own
        ok = all(verdicts)
    elif edit.edit_type == "remove":
        gone = edit.source.objects[edit.source_index[0]]
        at_place = m.at(gone.center)
        ok = at_place is None and not m.claim_pair(gone.pair)
    else:
        new = target[edit.target_index[0]]
        stayed = edit.edit_type == "move" and m.at(edit.source.objects[edit.source_index[0]].center) is not None

        def fits(d: DetectedObject) -> bool:
            return in_place(edit.place, d.center, n) and (edit.edit_type == "add" or m.same_size(d, new))

        found = m.claim_pair(new.pair, fits)
        ok = not stayed and bool(found) and fits(found[0])
        m.release(found[1:])  # the edit explains one object of its pair; a second copy is an extra
    return EditScore(edit_ok=bool(ok), preserved=kept_ok and not m.free)
