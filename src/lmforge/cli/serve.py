"""`lmforge serve`: a run behind an OpenAI-compatible HTTP API."""

import argparse
from pathlib import Path

from lmforge.cli.generate import add_dtype_flag

EXAMPLES = """examples:
  lmforge serve runs/smol --port 8000
  then any OpenAI client: base_url="http://127.0.0.1:8000/v1" (api_key: anything, or --api-key)
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smol", "prompt": "The list type", "max_tokens": 20, "temperature": 0}'
"""


def add_serve(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "serve",
        help="serve a run through an OpenAI-compatible API (pip install 'lmforge[serve]')",
        description="Serve a run over HTTP: /v1/completions, /v1/chat/completions (streamed "
        "with server-sent events), /v1/models, /health, /tokenizer_info, /tokenize. Binds "
        "127.0.0.1 unless --host says otherwise.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1 requests")
    p.add_argument(
        "--queue-size", type=int, default=64, help="requests that may wait; more get 429"
    )
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    add_dtype_flag(p)


def run_serve(args: argparse.Namespace) -> None:
    from lmforge.jobs.serve import serve

    settings = (args.api_key, args.queue_size, args.dtype, args.max_batch)
    serve(args.run, args.host, args.port, *settings)
