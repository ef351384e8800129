"""``harmon serve``: the web page and the OpenAI-compatible API on one port (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from pathlib import Path

from harmon.cli.common import add_model_args, load_pipeline

logger = logging.getLogger(__name__)


def model_name(args: argparse.Namespace) -> str:
    """The name clients call the model by: --model-name, else the model folder's or checkpoint's name."""
    if args.model_name:
        return args.model_name
    if args.model:
        return Path(args.model).resolve().name
    if args.checkpoint:
        return Path(args.checkpoint).stem
    return "harmon-shapes-tiny"


def check_address(host: str, port: int) -> None:
    """Bind ``host``:``port`` once and let go, so that an unknown host or a port in use is named before the model
    loads (uvicorn would say only "Name or service not known" or "address already in use", after it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host!r} is not an address of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from harmon.serve import ServeLimits, create_app
    except ImportError as err:
        missing = f"harmon serve needs the serve extra ({err.name} is missing): pip install 'harmon[serve]'"
        raise SystemExit(missing) from None
    from harmon.validate import check_number

    check_number("--port", args.port, low=0, high=65535, integer=True)
    fields = {name: getattr(args, name) for name in ServeLimits.__dataclass_fields__}
    limits = ServeLimits(**fields)  # checked before the model loads
    check_address(args.host, args.port)
    pipe = load_pipeline(args)
    app = create_app(pipe, limits, model_name(args))
    host = args.host
    try:
        public = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        public = host != "localhost"
    if public:
        logger.warning("serving on %s: anyone who can reach this machine can use the model (there is no login)", host)
    print(f"harmon serve: http://{host}:{args.port}/ (model {model_name(args)}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    from harmon.serve.limits import ServeLimits

    s = sub.add_parser(
        "serve",
        help="a web page and an OpenAI-compatible API (needs pip install 'harmon[serve]')",
        description="Serve the page (GET /) and the API (/v1/models, /v1/images/generations, /v1/chat/completions, "
        "/health) from one process. Every limit below answers a request over it with a 4xx naming the flag.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model-name", help="the name clients call the model by (default: the model folder's name)")
    g = s.add_argument_group("limits")
    for flag, kind, default, text in ServeLimits.flags():
        g.add_argument(flag, type=kind, default=default, metavar="N", help=f"{text} (default: {default})")
    add_model_args(s)
    s.set_defaults(func=cmd_serve)
