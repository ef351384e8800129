"""Prompt templates used by generation, understanding and training (spec §9.1, §10, §11.4)."""

from __future__ import annotations

import re
from collections.abc import Sequence

IMAGE_PLACEHOLDER = -200  # id of an image-token slot in training sequences (the official convention)
IGNORE_INDEX = -100  # label of tokens that are not supervised

CHAT_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
GENERATE_PREFIX = "Generate an image: "  # conditional text-to-image input, followed by the prompt
UNCONDITIONAL_PROMPT = "Generate an image."  # the classifier-free-guidance input
EDIT_PREFIX = "Edit the image: "  # image-conditioned editing input, after the source image, then the instruction

# Instructions for captioning data, our own wording of the two kinds the official code uses.
DETAILED_CAPTION_INSTRUCTIONS = (
    "Describe the image in detail.",
    "Give a thorough description of this picture.",
    "What is shown in this image? Describe every object you can see.",
    "Explain the contents of the image, including the objects and where they are.",
    "Write a detailed account of what the image shows.",
    "Describe the scene: its objects, their colors and their positions.",
    "Provide a comprehensive description of the picture.",
    "Tell me everything visible in this image.",
    "Analyze the image and describe its contents carefully.",
    "What does this picture depict? Be specific.",
    "Describe the foreground and the background of the image.",
    "Give an elaborate description of the image.",
    "Describe what you see, object by object.",
)
BRIEF_CAPTION_INSTRUCTIONS = (
    "Describe the image briefly.",
    "Give a short caption for this image.",
    "Summarize the picture in one sentence.",
    "Write a concise caption.",
    "What is in the image? Answer briefly.",
    "Caption this picture.",
    "Provide a one-line description of the image.",
    "Briefly state what the image shows.",
    "Give a brief summary of the scene.",
)


# Reconstruction prompts (RecA, arXiv 2509.07295): the model sees its own understanding features of an image and one
# of these, and learns to draw that image again. Our own wording: requests to describe or to redraw the picture,
# short and long, so no single phrase becomes the trigger.
RECONSTRUCTION_TEMPLATES = (
    "Describe the image in detail.",
    "Redraw this picture.",
    "Recreate the image exactly.",
    "Draw this scene again.",
    "Reproduce the picture above.",
    "Paint the same image once more.",
    "Make a faithful copy of this image.",
    "Render this scene again, keeping every object where it is.",
    "Generate the same picture, with the same colors and layout.",
    "Describe every object, its color, its shape and its place.",
    "List the objects in the image with their colors and positions.",
    "Give a complete account of what the picture shows.",
    "What does this image contain? Describe it fully.",
    "Describe the layout of the scene from left to right.",
    "Describe the scene from top to bottom.",
    "Explain the composition of this picture.",
    "Summarize the image, then describe its details.",
    "Describe the colors, the shapes and the background.",
    "Tell me what each part of the image looks like.",
    "Describe the foreground and the background.",
    "Note the number of objects and where each one sits.",
    "Describe the textures and the lighting of the picture.",
    "Catalog everything visible in the image.",
    "Write a precise description that would let someone redraw this image.",
    "Draw the image again from what you see.",
    "Show me this picture once more.",
    "Copy this image.",
    "Repaint the scene as it is.",
    "Reconstruct the image.",
    "Rebuild this picture object by object.",
    "Produce an image identical to this one.",
    "Render the picture again at the same size.",
    "Generate this image again.",
    "Recreate the scene with the same objects in the same places.",
    "Duplicate the picture, keeping its colors.",
    "Make the same drawing again.",
    "Sketch this picture again, then fill in its colors.",
    "Describe the relations between the objects in the picture.",
    "Which objects are in the image, and how are they arranged?",
    "Describe the sizes of the objects relative to each other.",
    "Describe the image as a painter would before copying it.",
    "Give a careful inventory of the picture's contents.",
    "Describe the spatial arrangement and the palette of the image.",
    "Analyze the picture: objects, colors, shapes, positions and setting.",
    "Look at the image and draw it again.",
    "Reproduce the composition and the colors of this picture.",
    "Create a replica of the given image.",
    "Describe the picture so that nothing is left out.",
    "Detail the scene: what is where, and in which color.",
    "Recreate this image faithfully.",
    "Reproduce the image, object for object.",
    "Describe this picture briefly, then draw it.",
    "What would you need to redraw this image? Describe it.",
    "Restore this picture as it is.",
    "Render the same scene.",
    "Draw a copy of this picture.",
)


def join_phrases(phrases: Sequence[str]) -> str:
    """Phrases listed as every generated text lists them: "a", "a and b", "a, b and c" ("" for none)."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


PHRASE_SEPARATOR = re.compile(r",\s*|\s+and\s+")  # splits what join_phrases joined: PHRASE_SEPARATOR.split(text)


def chat(text: str) -> str:
    """Wrap one user turn in the ChatML template (no system prompt), ending where the assistant starts."""
    return CHAT_TEMPLATE.format(input=text)


def generation_prompt(prompt: str) -> str:
    """The conditional text-to-image input for a user prompt."""
    return chat(GENERATE_PREFIX + prompt.strip())


def unconditional_prompt() -> str:
    return chat(UNCONDITIONAL_PROMPT)


def understanding_prompt(question: str, image_token: str = "<image>") -> str:
    """The understanding input: the image placeholder, a newline, then the question (spec §10 step 3)."""
    return chat(f"{image_token}\n{question}")


def image_prompt(text: str, n_images: int = 1, image_token: str = "<image>") -> str:
    """An image-conditioned input: ``n_images`` image placeholders, each on its own line, then ``text`` (the
    understanding layout of spec §10, which RecA's reconstruction prompts also use)."""
    return chat(f"{image_token}\n" * n_images + text)


def edit_prompt(instruction: str, image_token: str = "<image>") -> str:
    """The editing input: the source image, then the instruction."""
    return image_prompt(EDIT_PREFIX + instruction.strip(), 1, image_token)


def image_only_prompt(n_images: int = 1, image_token: str = "<image>") -> str:
    """The image-conditioned input with its text dropped: the images and the unconditional request. It is the
    guidance branch "image without instruction" of editing, and what RecA trains when it drops the template."""
    return image_prompt(UNCONDITIONAL_PROMPT, n_images, image_token)
