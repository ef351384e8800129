"""Prompt templates used by generation, understanding and training (spec §9.1, §10, §11.4)."""

from __future__ import annotations

IMAGE_PLACEHOLDER = -200  # id of an image-token slot in training sequences (the official convention)
IGNORE_INDEX = -100  # label of tokens that are not supervised

CHAT_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
GENERATE_PREFIX = "Generate an image: "  # conditional text-to-image input, followed by the prompt
UNCONDITIONAL_PROMPT = "Generate an image."  # the classifier-free-guidance input

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
