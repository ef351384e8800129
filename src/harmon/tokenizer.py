"""Tokenizers: loading a Qwen2.5 tokenizer folder, adding ``<image>``, and training a small one for tiny models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from harmon.prompts import END_OF_TEXT, IM_END, IM_START

SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)
USER_TEXT = "\ue000"  # marks where the user's text goes in a template (a private-use character no template holds)


def encode_template(
    tok: PreTrainedTokenizerFast,
    template: str,
    user_text: str | Sequence[str] = "",
    image_token: str = "<image>",
    image_slots: bool = False,
) -> list[int]:
    """Token ids of ``template`` with :data:`USER_TEXT` replaced by ``user_text``.

    Control tokens (the chat template's ``<|im_start|>``/``<|im_end|>`` and the image placeholder) become tokens
    only where the template has them. The user's text is encoded as plain text even where it spells a control
    token, so typed text is never injected into the template. The ids equal those of tokenizing the filled-in
    string in one call whenever the user's text holds no control token (the tokenizer splits at control tokens
    either way). A sequence of texts fills the template's markers in order (a conversation's messages), one text
    per marker.

    ``image_slots``: the one exception, asked for explicitly: each ``image_token`` the user's text spells becomes
    the image placeholder (a prompt that names where given images go); every other control token stays text.
    """
    controls = (IM_START, IM_END, END_OF_TEXT, image_token)
    image_id = tok.convert_tokens_to_ids(image_token)
    texts = iter([user_text] * template.count(USER_TEXT) if isinstance(user_text, str) else user_text)
    ids: list[int] = []
    for piece in re.split("(" + "|".join(re.escape(c) for c in controls) + ")", template):
        if piece in controls:
            ids.append(tok.convert_tokens_to_ids(piece))
        elif piece:
            # markers are replaced in the template only, so a text that holds the marker character stays as typed
            text = "".join((_next_text(texts) if i else "") + part for i, part in enumerate(piece.split(USER_TEXT)))
            for k, part in enumerate(text.split(image_token) if image_slots else [text]):
                if k:
                    ids.append(image_id)
                if part:
                    ids += tok(part, add_special_tokens=False, split_special_tokens=True).input_ids
    if next(texts, None) is not None:
        raise ValueError("more texts than the template has places for")
    return ids


def _next_text(texts: Iterator[str]) -> str:
    text = next(texts, None)
    if text is None:
        raise ValueError("fewer texts than the template has places for")
    return text


def load_tokenizer(path: str | Path, image_token: str = "<image>") -> PreTrainedTokenizerFast:
    """Load a local tokenizer folder (tokenizer.json + tokenizer_config.json) and make sure ``image_token`` exists.

    Only local files are read. Raises FileNotFoundError naming the folder when it holds no tokenizer.
    """
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path} (a Qwen2.5 folder or a saved harmon model is needed)")
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # a broken file: a parse error, or the tokenizers library's own exception type
        broken = isinstance(err, (ValueError, OSError, TypeError, KeyError))
        if not broken and type(err).__module__.split(".")[0] not in ("tokenizers", "builtins"):
            raise
        raise ValueError(f"cannot read the tokenizer in {path} ({path / 'tokenizer.json'}): {err}") from None
    return ensure_special_tokens(tok, image_token)


def ensure_special_tokens(tok: PreTrainedTokenizerFast, image_token: str = "<image>") -> PreTrainedTokenizerFast:
    """Add ``image_token`` as a special token and fill pad/eos with the ChatML tokens when missing."""
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if tok.eos_token is None and IM_END in tok.get_vocab():
        tok.eos_token = IM_END
    if tok.pad_token is None:
        tok.pad_token = END_OF_TEXT if END_OF_TEXT in tok.get_vocab() else tok.eos_token
    tok.padding_side = "right"
    return tok


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, image_token: str = "<image>", min_frequency: int = 1
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (Qwen-style: no BOS, ChatML specials, ``<image>``) on ``texts``.

    Byte-level means any string is encodable; whole words of a small world's vocabulary become single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [*SPECIAL_TOKENS, image_token]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token=IM_END, pad_token=END_OF_TEXT, additional_special_tokens=[IM_START, image_token]
    )
    return ensure_special_tokens(tok, image_token)
