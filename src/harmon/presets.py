"""Named speed presets of generation: factors applied to a model's recorded sampling defaults
(:func:`harmon.sampling.settings_from_defaults` applies them; benchmarks/README.md measures them)."""

from __future__ import annotations

# Factors, so that one name means the same trade-off for the shapes model and the 0.5B one.
PRESETS: dict[str, dict[str, float]] = {
    "full": {},
    "fast": {"num_iter": 0.5, "diffusion_steps_final": 0.25},
    "faster": {"num_iter": 0.25, "num_sampling_steps": 0.5, "diffusion_steps_final": 0.1},
    # Every MAR step, 8 % of the diffusion steps (8 of 100): on the shapes model the MAR steps decide composition
    # and the respaced v-prediction head needs few steps (benchmarks/README.md has the measured table).
    "lean": {"num_sampling_steps": 0.08},
    # and three quarters of the MAR steps (12 of 16)
    "leaner": {"num_iter": 0.75, "num_sampling_steps": 0.08},
    # Every MAR step, diffusion steps annealed from 12 % to 4 % (12 -> 4 of 100): the same number of head
    # evaluations as "lean" on a 4-token grid, spent more on the early tokens
    "brisk": {"num_sampling_steps": 0.12, "diffusion_steps_final": 1 / 3},
    # Generation then reconstruction (GtR): 3/8 of the MAR steps (24 of 64), the checkerboard structure half in all
    # but the last, the detail half in the last one
    "gtr": {"num_iter": 0.375, "detail_steps": 1},
    # LazyMAR's condition cache: the guidance branches through the network on every second step
    "lazy": {"cond_refresh": 2},
    "gtr-lazy": {"num_iter": 0.375, "detail_steps": 1, "cond_refresh": 2},
    # LazyMAR's token cache and condition cache together: every token on every second step, between them the
    # quarter of tokens that moved most (and those drawn or revealed); the guidance branches on every second step
    "lazy-tokens": {"cond_refresh": 2, "token_refresh": 2, "token_ratio": 0.25},
}
# preset entries taken as they are, not as factors of a base setting
FIXED_PRESET_SETTINGS = ("detail_steps", "cond_refresh", "token_refresh", "token_ratio")


def preset_settings(
    name: str, num_iter: int, num_sampling_steps: str, scale_iter: bool = True, scale_steps: bool = True
) -> dict[str, int | str | None]:
    """Settings of preset ``name`` from base settings ``num_iter`` and ``num_sampling_steps``.

    ``scale_iter`` / ``scale_steps`` False keep that base value as it is (a setting the user gave explicitly);
    the annealing target is then computed from the kept step count.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    factors = PRESETS[name]
    out: dict[str, int | str | None] = {}
    if "num_iter" in factors and scale_iter:
        out["num_iter"] = max(1, round(num_iter * factors["num_iter"]))
    steps = num_sampling_steps
    if ("num_sampling_steps" in factors or "diffusion_steps_final" in factors) and not str(steps).isdigit():
        raise ValueError(f"preset {name!r} needs num_sampling_steps as one number, got {steps!r}")
    if "num_sampling_steps" in factors and scale_steps:
        steps = str(max(1, round(int(steps) * factors["num_sampling_steps"])))
        out["num_sampling_steps"] = steps
    if "diffusion_steps_final" in factors:
        out["diffusion_steps_final"] = max(1, round(int(steps) * factors["diffusion_steps_final"]))
    out.update({key: factors[key] for key in FIXED_PRESET_SETTINGS if key in factors})
    return out
