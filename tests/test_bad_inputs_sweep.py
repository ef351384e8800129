"""Bad inputs found by a sweep outside the corpus (tests/bad_inputs): numbers too large for a float or for 64 bits,
NumPy scalars, strings where a flag is a bool, an image that would need a gigantic square canvas, a pipe named as
an image, JSON nested past the parser's recursion, a blank user turn, and command lines that failed only after
the model loaded (or with a traceback). Each must be refused by name, before any model work where it can be."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmon import images
from harmon.cli import main, run
from harmon.images import expand_to_square, load_image, prepare_for_understanding
from harmon.loading import resolve_device
from harmon.serve.app import read_json as read_body
from harmon.serve.limits import ServeLimits
from harmon.serve.requests import ApiError, Served, decode_image, parse_chat, parse_generation, parse_size
from harmon.validate import check_fields, read_json

RED = Image.new("RGB", (64, 64), "red")
HUGE = 10**400  # a JSON body or a script can hold it; float() of it overflows
SERVED = Served("m", ServeLimits(), token_px=32, default_size=64, max_new_tokens=16)


class ReachedModel(Exception):
    """Raised instead of loading a model: the command should have refused its arguments before."""


def no_model(*args, **kwargs):
    raise ReachedModel("the command loaded a model before refusing its arguments")


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- Python API
@pytest.mark.parametrize(
    "call,phrase",
    [
        (lambda p: p.generate("a red circle", num_images_per_prompt=HUGE), "num_images_per_prompt"),
        (lambda p: p.generate("a red circle", guidance_scale=HUGE), "guidance_scale"),
        (lambda p: p.generate("a red circle", image_size=HUGE), "image_size"),
        (lambda p: p.describe(RED, "What is it?", max_new_tokens=HUGE), "max_new_tokens"),
    ],
    ids=["num-images", "guidance", "image-size", "max-new-tokens"],
)
def test_numbers_beyond_a_float_or_64_bits_are_refused_by_name(pipe, call, phrase):
    with pytest.raises(ValueError, match=phrase):
        call(pipe)


def test_a_numpy_scalar_is_named_with_how_to_pass_it(pipe):
    with pytest.raises(ValueError, match=r"image_size .*np\.int64\(64\).*int\(x\)"):
        pipe.generate("a red circle", image_size=np.int64(64))


@pytest.mark.parametrize(
    "call,phrase",
    [
        (lambda p: p.describe(RED, "What is it?", do_sample="no", max_new_tokens=1), "do_sample"),
        (lambda p: p.chat([{"role": "user", "content": "hi"}], stream="yes", max_new_tokens=1), "stream"),
        (lambda p: p.generate("a red circle", compile="yes"), "compile"),
        (lambda p: p.generate("a red circle", callback=3), "callback"),
        (lambda p: p.edit(RED, "make it blue", callback="print"), "callback"),
    ],
    ids=["do-sample-string", "stream-string", "compile-string", "callback-int", "edit-callback-string"],
)
def test_flags_and_callbacks_of_the_wrong_type_are_refused(pipe, call, phrase):
    # "no" is truthy: describe sampled where the user asked it not to
    with pytest.raises(TypeError, match=phrase):
        call(pipe)


@pytest.mark.parametrize(
    "messages,phrase",
    [
        ([{"role": "user", "content": [{"type": "text", "text": "  "}]}], r"content is empty"),
        ([{"role": "user", "content": [{"type": "image", "image": ""}]}], r"image is an empty path"),
    ],
    ids=["blank-text-parts", "empty-image-path"],
)
def test_chat_messages_that_say_nothing_or_name_nothing_are_refused(pipe, messages, phrase):
    with pytest.raises(ValueError, match=phrase):
        pipe.chat(messages, max_new_tokens=1)


def test_describe_an_empty_path_says_so_not_that_the_folder_is_a_folder(pipe):
    with pytest.raises(ValueError, match="image path is empty"):
        pipe.describe("", "What is it?")


@pytest.mark.parametrize(
    "args,error,phrase",
    [(("tpu",), ValueError, "tpu"), (("meta",), ValueError, "meta"), ((None, "int8"), ValueError, "int8")],
    ids=["unknown-device", "meta-device", "integer-dtype"],
)
def test_pipeline_to_refuses_what_it_cannot_run_in(pipe, args, error, phrase):
    with pytest.raises(error, match=phrase):
        pipe.to(*args)
    assert pipe.device.type == "cpu" and pipe.model.dtype == torch.float32


def test_the_meta_device_is_refused_before_loading():
    with pytest.raises(ValueError, match="device meta"):
        resolve_device("meta", None)


def test_a_float_field_given_an_int_beyond_a_float_is_refused_by_name():
    @dataclasses.dataclass
    class Optim:
        lr: float = 1e-4

    with pytest.raises(ValueError, match=r"Optim\.lr must be a finite number"):
        check_fields(Optim(lr=HUGE))  # a --set optim.lr=1000...0 of 400 digits


# ---------------------------------------------------------------------------------------------- files and images
def test_json_nested_past_the_parser_is_named_with_its_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep\.json nests its JSON too deeply"):
        read_json(path)


def test_an_empty_image_path_and_a_pipe_are_named(tmp_path):
    with pytest.raises(ValueError, match="image path is empty"):
        load_image("")
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ValueError, match=r"camera\.png is not a regular file"):
        load_image(fifo)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_float_image_with_nan_or_infinite_pixels_is_refused(bad):
    arr = np.full((8, 8), 0.5, dtype=np.float32)
    arr[3, 4] = bad
    with pytest.raises(ValueError, match="F-mode image holds NaN or infinite pixels"):
        prepare_for_understanding(Image.fromarray(arr, mode="F"), 64)


def test_describe_many_refuses_one_string_for_its_lists(pipe):
    with pytest.raises(TypeError, match="describe_many takes a list of images and a list of questions"):
        pipe.describe_many("ab", "cd")
    with pytest.raises(TypeError, match="for one, call describe"):
        pipe.describe_many([RED], "What is it?")


def test_a_thin_strip_is_shrunk_before_it_is_padded_to_a_square(monkeypatch):
    monkeypatch.setattr(images, "MAX_SQUARE_SIDE", 256)
    square = expand_to_square(Image.new("RGB", (3, 1000), "blue"))
    assert square.size == (256, 256)
    assert square.getpixel((127, 128)) == (0, 0, 255) and square.getpixel((0, 0)) == images.GRAY  # 1 px wide


def test_a_strip_of_a_few_hundred_bytes_is_understood_without_a_huge_canvas(tmp_path):
    # 1 x 100000 px passes Pillow's decoding limit; padded as it is, its square would take 30 GB
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 100_000), "red").save(path)
    assert path.stat().st_size < 2000
    pixels = prepare_for_understanding(path, 64)
    assert pixels.shape == (1, 3, 64, 64) and torch.isfinite(pixels).all()


# ---------------------------------------------------------------------------------------------- serve
@pytest.mark.parametrize(
    "body,phrase",
    [
        ({"prompt": "a", "n": HUGE}, "n must be an integer"),
        ({"prompt": "a", "seed": HUGE}, "seed must be an integer"),
        ({"prompt": "a", "guidance_scale": HUGE}, "guidance_scale must be a number"),
    ],
    ids=["n", "seed", "guidance"],
)
def test_serve_huge_json_integers_get_a_400(body, phrase):
    with pytest.raises(ApiError, match=phrase) as err:
        parse_generation(body, SERVED, ("fast",))
    assert err.value.status == 400


def test_serve_a_size_of_digits_that_int_cannot_read_gets_a_400():
    with pytest.raises(ApiError, match="size must be 'NxN'") as err:
        parse_size("\u00b2x\u00b2", SERVED)  # superscript twos: str.isdigit() but not int()
    assert err.value.status == 400


@pytest.mark.parametrize(
    "body,phrase",
    [
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "role must be one of"),
        ({"messages": [{"role": {"a": 1}, "content": "hi"}]}, "role must be one of"),
        ({"messages": [{"role": "user", "content": ""}]}, "content is empty"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]}, "content is empty"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": HUGE}, "temperature must be"),
        ({"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 1.5}, "frequency_penalty"),
        ({"messages": [{"role": "user", "content": "hi"}], "presence_penalty": -1}, "presence_penalty"),
        ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"7": 100}}, "logit_bias"),
    ],
    ids=["role-list", "role-object", "empty", "blank-part", "huge-temperature", "freq", "presence", "logit-bias"],
)
def test_serve_chat_bodies_that_failed_inside_or_were_ignored_get_a_400(body, phrase):
    with pytest.raises(ApiError, match=phrase) as err:
        parse_chat(body, SERVED)
    assert err.value.status == 400


def test_serve_the_defaults_of_unsupported_penalties_pass():
    body = {"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 0, "presence_penalty": 0.0}
    assert parse_chat(body, SERVED).messages[0]["role"] == "user"
    # what clients send for "unset": an empty logit_bias, tools list or stop list
    body = {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {}, "tools": [], "stop": None}
    assert parse_chat(body, SERVED).messages[0]["role"] == "user"


def test_serve_an_unknown_image_format_is_named_without_python_object_names():
    with pytest.raises(ApiError) as err:
        decode_image("data:image/png;base64,aGVsbG8=", "messages[0].content[0].image_url", ServeLimits())
    assert err.value.status == 400 and "BytesIO" not in err.value.message
    assert "not an image" in err.value.message


def test_serve_a_body_nested_past_the_parser_gets_a_400():
    from starlette.requests import Request

    body = ("[" * 50_000 + "]" * 50_000).encode()

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(ApiError, match="nests its JSON too deeply") as err:
        asyncio.run(read_body(Request(scope, receive), 1 << 20))
    assert err.value.status == 400


# ---------------------------------------------------------------------------------------------- command line
def test_running_out_of_memory_is_one_line_not_a_traceback(capsys):
    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 7680 GB")

    def python_allocate(args):
        raise MemoryError()

    for func in (allocate, python_allocate):  # torch's allocator, then Python's
        assert run(argparse.Namespace(func=func, command="generate")) == 2
        assert "harmon generate: error: out of memory" in capsys.readouterr().err


def test_other_runtime_errors_still_show_their_traceback():
    def broken(args):
        raise RuntimeError("a fault of ours")

    with pytest.raises(RuntimeError, match="a fault of ours"):
        run(argparse.Namespace(func=broken, command="generate"))


def test_an_overflow_is_one_line(capsys):
    def overflow(args):
        raise OverflowError("int too large to convert to float")

    assert run(argparse.Namespace(func=overflow, command="train")) == 2
    assert "harmon train: error: int too large" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,phrase",
    [
        (["--seed", str(2**70)], "--seed"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--top-p", "5"], "top_p"),
        (["--sample", "--temperature", "nan"], "temperature"),
    ],
    ids=["seed-beyond-64-bits", "max-new-tokens-zero", "top-p-five", "temperature-nan"],
)
def test_chat_refuses_its_settings_before_the_model_loads(monkeypatch, capsys, flags, phrase):
    monkeypatch.setattr("harmon.cli.chat.load_pipeline", no_model)
    code, err = cli(["chat", *flags], capsys)
    assert code == 2 and phrase in err, err


def test_chat_refuses_an_image_size_before_the_first_message(pipe, monkeypatch, capsys):
    monkeypatch.setattr("harmon.cli.chat.load_pipeline", lambda args: pipe)
    monkeypatch.setattr("builtins.input", no_model)  # the conversation must not start
    code, err = cli(["chat", "--image-size", "24"], capsys)
    assert code == 2 and "--image-size 24 is not a multiple of" in err, err


def test_serve_names_a_port_in_use_and_an_unknown_host_before_the_model_loads(monkeypatch, capsys):
    monkeypatch.setattr("harmon.cli.serve.load_pipeline", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = cli(["serve", "--port", str(port)], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err, err
    code, err = cli(["serve", "--host", "no-such-host.invalid", "--port", "0"], capsys)
    assert code == 2 and "--host 'no-such-host.invalid'" in err, err


@pytest.mark.parametrize(
    "flags,phrase",
    [
        (["--prompts", "0", "--questions", "0", "--shape-questions", "0"], "nothing to evaluate"),
        (["--level", "grid", "--prompts", "0", "--questions", "0"], "nothing to evaluate"),
        (["--prompts", str(10**14)], "--prompts: must be in [0, 1000000]"),
    ],
    ids=["all-zero", "levels-all-zero", "prompts-absurd"],
)
def test_eval_shapes_refuses_nothing_and_absurd_counts_before_the_model(monkeypatch, capsys, flags, phrase):
    monkeypatch.setattr("harmon.cli.eval.load_pipeline", no_model)
    code, err = cli(["eval", "shapes", *flags], capsys)
    assert code == 2 and phrase in err, err


def test_train_config_nested_past_the_parser_is_one_line(tmp_path, capsys):
    path = tmp_path / "train.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    code, err = cli(["train", "--config", str(path), "--print-config"], capsys)
    assert code == 2 and f"{path} nests its JSON too deeply" in err, err


def test_meta_device_on_the_command_line_is_one_line(tmp_path, capsys):
    code, err = cli(["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--device", "meta"], capsys)
    assert code == 2 and "device meta" in err, err
    assert not Path(tmp_path / "x.png").exists()
