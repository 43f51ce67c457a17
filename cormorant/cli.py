"""The composition root: `cormorant serve | generate | chat | batch | keys | models | bench`.

Parses arguments, builds the pieces and wires them together; no logic of its own.
"""
from __future__ import annotations

import argparse
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
        from cormorant.server.launch import add_serve_args, run_server
    except ImportError:
        add_serve_args = None
    if add_serve_args is not None:
        serve = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
        add_serve_args(serve)
        from cormorant.scaleout.launch import add_ray_args

        add_ray_args(serve)
        serve.set_defaults(func=_serve(run_server))
        from cormorant.server.batch_offline import add_batch_args, run_batch

        batch = sub.add_parser("batch", help="run an OpenAI batch file offline: batch run "
                               "input.jsonl -o output.jsonl")
        add_batch_args(batch)
        batch.set_defaults(func=run_batch)

    from cormorant.gateway.auth.cli import add_keys_args, run_keys

    keys = sub.add_parser("keys", help="manage API keys: create | list | revoke | rotate")
    add_keys_args(keys)
    keys.set_defaults(func=run_keys)

    from cormorant.hosting.admin_cli import add_models_args, run_models

    models = sub.add_parser("models", help="manage a running server's models and aliases: "
                            "list | register | load | unload | reload | remove | alias | unalias")
    add_models_args(models)
    models.set_defaults(func=run_models)

    from cormorant.bench.cli import add_bench_args, run_bench

    bench = sub.add_parser("bench", help="benchmarks B1-B4 against the card's limits and peers")
    add_bench_args(bench)
    bench.set_defaults(func=run_bench)

    return parser


def _serve(run_server):
    """`cormorant serve`, or with --ray the same flags through Ray Serve (cormorant.scaleout)."""
    def run(args):
        if args.ray:
            from cormorant.scaleout.launch import run_ray

            return run_ray(args)
        return run_server(args)
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
