"""The composition root: `cormorant serve | generate | chat | batch | keys | models | bench`.

Parses arguments, builds the pieces and wires them together; no logic of its own.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cormorant.engine_args import add_engine_args


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)


def _llm(args):
    from cormorant import LLM
    from cormorant.engine_args import names_for

    return LLM(args.model, **{name: getattr(args, name) for name in names_for("llm")})


def _params(args):
    from cormorant import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k)


def cmd_generate(args) -> int:
    llm = _llm(args)
    params = _params(args)
    for prompt in args.prompts:
        if args.chat:
            prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        for out in llm.stream(prompt, params):
            print(out.outputs[0].text_delta, end="", flush=True)
        print()
    return 0


def cmd_chat(args) -> int:
    llm = _llm(args)
    params = _params(args)
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("cormorant chat — empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        ids = llm.tokenizer.apply_chat_template(history)
        reply = ""
        for out in llm.stream(ids, params):
            delta = out.outputs[0].text_delta
            reply += delta
            print(delta, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": reply})
    return 0


# The subcommands that live in their own packages: (name, module, its add-arguments function,
# its run function, help). Imported here, lazily, so `cormorant generate` never loads the server.
_SUBCOMMANDS = (
    ("serve", "cormorant.server.launch", "add_serve_args", "run_server",
     "serve the OpenAI-compatible HTTP API"),
    ("batch", "cormorant.server.batch_offline", "add_batch_args", "run_batch",
     "run an OpenAI batch file offline: batch run input.jsonl -o output.jsonl"),
    ("keys", "cormorant.gateway.auth.cli", "add_keys_args", "run_keys",
     "manage API keys: create | list | revoke | rotate"),
    ("models", "cormorant.hosting.admin_cli", "add_models_args", "run_models",
     "manage a running server's models and aliases: "
     "list | register | load | unload | reload | remove | alias | unalias"),
    ("bench", "cormorant.bench.cli", "add_bench_args", "run_bench",
     "benchmarks B1-B4 against the card's limits and peers"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cormorant", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="complete prompts and print the text")
    add_engine_args(gen, "generate")
    _add_sampling_args(gen)
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    gen.add_argument("prompts", nargs="+")
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat in the terminal, streamed")
    add_engine_args(chat, "chat")
    _add_sampling_args(chat)
    chat.add_argument("--system", default=None, help="a system message")
    chat.set_defaults(func=cmd_chat)

    try:
        import cormorant.server.launch  # noqa: F401  (the server's extras may be missing)
        have_server = True
    except ImportError:
        have_server = False
    for name, module, add_args, run, help_ in _SUBCOMMANDS:
        if module.startswith("cormorant.server.") and not have_server:
            continue
        imported = importlib.import_module(module)
        command = sub.add_parser(name, help=help_)
        getattr(imported, add_args)(command)
        command.set_defaults(func=getattr(imported, run))

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
