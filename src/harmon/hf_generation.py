"""A Qwen folder's ``generation_config.json``, read for what it changes in the original's greedy answers (spec §10).

The official script loads the LLM with ``from_pretrained``, so transformers merges this file into every
``generate`` call; the script then asks for greedy decoding (``do_sample=False``) with its own ``max_new_tokens``,
``eos_token_id`` and ``pad_token_id``. What survives that call and still shapes a greedy answer is, in Qwen2.5's
files, the repetition penalty. Every field is sorted into one of three groups, checked against transformers'
``_get_logits_processor``, ``_get_stopping_criteria`` and ``get_generation_mode``:

* :data:`SUPPORTED`: read, checked and recorded in ``GenerationDefaults``;
* :data:`NO_EFFECT`: cannot change the original's greedy answer (sampling-only settings, values the call sets
  itself, beam-search-only and encoder-decoder-only settings, output switches, cache and compile choices);
* :data:`NEUTRAL`: would change greedy answers; accepted only at a value that switches them off.

Anything else, and any :data:`NEUTRAL` field at another value, is refused by name: ``describe`` would otherwise
answer differently from the original without saying so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

GENERATION_CONFIG_NAME = "generation_config.json"

SUPPORTED = ("repetition_penalty",)

NO_EFFECT = frozenset(
    {
        # sampling only: do_sample=False disables these warpers
        *("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "top_h", "epsilon_cutoff"),
        "eta_cutoff",
        # set by the original's call, or unused when the prompt arrives as embeddings of one sequence
        *("eos_token_id", "pad_token_id", "bos_token_id", "max_length", "max_new_tokens", "decoder_start_token_id"),
        # beam search only (num_beams is checked in NEUTRAL)
        *("length_penalty", "early_stopping"),
        # encoder-decoder models only: transformers skips them for a decoder-only LLM fed embeddings
        *("encoder_repetition_penalty", "encoder_no_repeat_ngram_size"),
        # assisted decoding parameters: inert unless a trigger in NEUTRAL is set
        *("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"),
        *("assistant_lookbehind", "target_lookbehind", "max_matching_ngram_size", "is_assistant"),
        "assistant_ensemble_weight",
        # what is returned, how it is computed, file bookkeeping
        *("output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate"),
        *("use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile"),
        *("prefill_chunk_size", "low_memory", "continuous_batching_config", "transformers_version"),
        "_from_model_config",
        # remove_invalid_values only touches NaN/inf logits; renormalize_logits is a log-softmax (order kept)
        *("remove_invalid_values", "renormalize_logits"),
    }
)

# field -> the values at which it leaves a greedy answer as it is (type and value both match: true is not 1)
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0, 0.0),
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None, 0, 0.0),  # contrastive search with top_k > 1
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "guidance_scale": (None, 1, 1.0),
    **dict.fromkeys(("bad_words_ids", "force_words_ids", "constraints", "sequence_bias"), (None,)),
    **dict.fromkeys(("forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty"), (None,)),
    **dict.fromkeys(("suppress_tokens", "begin_suppress_tokens", "watermarking_config", "dola_layers"), (None,)),
    **dict.fromkeys(("stop_strings", "max_time", "prompt_lookup_num_tokens", "assistant_early_exit"), (None,)),
    "speculation_type": (None,),
    **dict.fromkeys(("use_mtp", "token_healing"), (None, False)),
}


def read_generation_config(folder: str | Path) -> dict[str, float]:
    """The ``GenerationDefaults`` fields a Qwen folder's generation_config.json sets (empty without the file).

    Raises ValueError naming the file and the field for unreadable JSON, a bad repetition penalty, a field that
    would change greedy answers in a way ``describe`` does not reproduce, or a field this reader does not know.
    """
    path = Path(folder) / GENERATION_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    for name, value in raw.items():
        if name in SUPPORTED or name in NO_EFFECT:
            continue
        if name not in NEUTRAL:
            raise ValueError(
                f"{path}: field {name!r} is unknown here, so whether it changes the original's greedy answers is "
                "unknown; remove it from the file if it does not"
            )
        if not any(type(value) is type(accepted) and value == accepted for accepted in NEUTRAL[name]):
            raise ValueError(
                f"{path}: {name}={value!r} changes greedy answers under transformers and describe does not "
                f"reproduce it; values accepted: {', '.join(map(repr, NEUTRAL[name]))}"
            )
    if "repetition_penalty" not in raw or raw["repetition_penalty"] is None:
        return {}
    penalty = raw["repetition_penalty"]
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not 0.0 < penalty < math.inf:
        raise ValueError(f"{path}: repetition_penalty must be a finite number > 0, got {penalty!r}")
    return {"repetition_penalty": float(penalty)}
