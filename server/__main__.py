"""The `gptserve` command: `serve` (the API server), `chat` (a terminal chat), `bench` (load)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pydantic import ValidationError

from server.settings import Settings

LIST_FLAGS = {"served_model_name", "cors_allowed_origins"}  # --flag A B C
REPEATED_FLAGS = {"api_key", "model"}  # --flag A --flag B


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptserve serve", description="Serve a model through an OpenAI-compatible API.",
        epilog="Every flag is also an environment variable: --max-num-seqs is GPTSERVE_MAX_NUM_SEQS.")
    for name, field in Settings.model_fields.items():
        is_hidden = (field.json_schema_extra or {}).get("hidden", False)
        kwargs: dict = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS if is_hidden else field.description,
                        "metavar": name.split("_")[-1].upper()}
        if field.annotation is bool:
            kwargs = {"default": argparse.SUPPRESS, "help": field.description, "action": "store_const", "const": True}
        elif name in LIST_FLAGS:
            kwargs["nargs"] = "+"
        elif name in REPEATED_FLAGS:
            kwargs["action"] = "append"
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    return parser


def serve(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    try:
        settings = Settings(**vars(args))  # flags override the environment, which overrides defaults
    except ValidationError as exc:
        for error in exc.errors():
            flag = f"--{str(error['loc'][0]).replace('_', '-')}: " if error["loc"] else ""
            print(f"gptserve serve: {flag}{error['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from server.app import create_app
    from server.http_protocol import limited_protocol
    from server.shutdown import DrainingServer

    exit_code = 0

    def on_fatal() -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    # The engine thread gives up the GIL at every torch op and must win it back to dispatch the
    # next; with Python's default 5 ms switch interval the event loop can hold it that long each
    # time. 0.2 ms measured +10% output tokens/s at concurrency 16 (BENCHMARKS.md).
    sys.setswitchinterval(0.0002)
    app = create_app(settings, on_fatal=on_fatal)
    max_connections = settings.max_connections or settings.max_num_seqs + settings.max_queued_requests + 128
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            http=limited_protocol(settings.max_header_bytes, settings.header_timeout, max_connections),
                            timeout_keep_alive=settings.keep_alive_timeout,
                            timeout_graceful_shutdown=5)  # after the drain: only cut streams are left
    server = DrainingServer(config, app.state.admission, drain_timeout=settings.drain_timeout)
    server.run()
    loader = app.state.loader_thread
    if loader is not None and loader.is_alive():
        # stopped (SIGTERM, or a fatal error) while weights were still loading: the load cannot be
        # interrupted and nothing else is left to finish, so exit now rather than wait for it
        logging.getLogger("gptserve.server").info("stopped while a model was loading; exiting without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"serve": "serve the API (the default)", "chat": "chat in the terminal with a running server",
                "bench": "load-test a running server"}
    if argv and argv[0] in ("-h", "--help"):
        print("usage: gptserve {serve,chat,bench} [options]\n")
        print("\n".join(f"  {name:6} {text}" for name, text in commands.items()))
        return 0
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in commands else ("serve", argv)
    if command == "chat":
        from clients.chat import main as chat_main
        return chat_main(rest)
    if command == "bench":
        try:
            from clients.bench import main as bench_main  # written separately; optional here
        except ImportError:
            print("gptserve bench: clients/bench.py is not installed", file=sys.stderr)
            return 2
        return bench_main(rest)
    return serve(rest)


if __name__ == "__main__":
    sys.exit(main())
