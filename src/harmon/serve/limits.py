"""What one server accepts: every limit a request is checked against, each with its flag, default and reason."""

from __future__ import annotations

from dataclasses import dataclass, fields

from harmon.validate import check_fields, check_number


@dataclass(frozen=True)
class ServeLimits:
    """Limits of ``harmon serve``; each field is the flag of the same name (``max_body_bytes`` -> --max-body-bytes).

    The defaults fit one CPU or GPU serving a handful of people: a request over a limit gets a 4xx naming it,
    before it reaches the model.
    """

    max_body_bytes: int = 16 * 2**20  # a request body, in bytes: a few large images as data URIs
    max_image_pixels: int = 4096 * 4096  # width x height of an uploaded image, read from its header before decoding
    max_images: int = 4  # images in one chat request, each encoded by the model
    max_prompt_chars: int = 4000  # characters of text in one request (a chat's whole history); the context binds too
    max_n: int = 4  # images one generation request may ask for (n)
    max_num_iter: int = 64  # masked-autoregressive steps a request may ask for (the releases' default)
    max_sampling_steps: int = 250  # diffusion steps per token (the releases sample with 100)
    max_image_size: int = 512  # pixels a side for generation (the releases' size)
    max_new_tokens: int = 512  # tokens one chat answer may ask for (max_tokens)
    max_queue: int = 16  # requests waiting or running; one more gets 429 with Retry-After
    max_batch: int = 8  # images of concurrent unseeded generation requests with equal settings run as one batch
    timeout: float = 120.0  # seconds a request may wait and run; then 504 and its work is stopped

    def __post_init__(self) -> None:
        check_fields(self)
        for f in fields(self):
            flag, value = f"--{f.name.replace('_', '-')}", getattr(self, f.name)
            if isinstance(value, int):
                check_number(flag, value, low=1, integer=True)
            else:
                check_number(flag, value, above=0)

    @classmethod
    def flags(cls) -> list[tuple[str, type, object, str]]:
        """(flag, type, default, help) of every limit, for the command line."""
        out = []
        for f in fields(cls):
            kind = float if f.name == "timeout" else int
            out.append((f"--{f.name.replace('_', '-')}", kind, f.default, LIMIT_HELP[f.name]))
        return out


LIMIT_HELP = {
    "max_body_bytes": "largest request body in bytes (413 above)",
    "max_image_pixels": "largest uploaded image, width x height (413 above; read from the header, before decoding)",
    "max_images": "most images in one chat request",
    "max_prompt_chars": "most characters of text in one request (a prompt, or a chat's whole history)",
    "max_n": "most images one generation request may ask for (n)",
    "max_num_iter": "most masked-autoregressive steps a request may ask for (num_iter)",
    "max_sampling_steps": "most diffusion steps per token a request may ask for (num_sampling_steps)",
    "max_image_size": "largest generated image side in pixels (size)",
    "max_new_tokens": "longest chat answer a request may ask for (max_tokens)",
    "max_queue": "requests waiting or running at once; more get 429 with Retry-After",
    "max_batch": "images of concurrent unseeded generation requests with the same settings run as one batch (1: none)",
    "timeout": "seconds a request may wait and run before 504 (its work is stopped)",
}
