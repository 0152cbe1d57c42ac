"""The ``mmrag`` command line: one module per verb (or verb group), registered here.

Behaviour lives in the library (``mmrag.tasks.*`` and the layers below); a verb module only turns
flags into calls and prints results. Shared conventions (errors, JSON output, ``--gen-opt``, how
an encoder and a corpus are named) are in :mod:`mmrag.cli.common`.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub unless the user asks
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mmrag.cli import ask, bridge, caption, chat, compose, index, info, quickstart, search, serve  # noqa: E402
from mmrag.cli.common import err  # noqa: E402
from mmrag.errors import MmragError  # noqa: E402

__all__ = ["app", "eval_app", "bridge_app", "main"]

# rich_markup_mode=None: click's plain help, which wraps long option names instead of cutting
# them ("--caption-datas…") as typer's rich tables do at 80 columns
_HELP = dict(rich_markup_mode=None, context_settings={"max_content_width": 120})
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multimodal RAG over image collections.", **_HELP)
bridge_app = typer.Typer(no_args_is_help=True, help="Fit and inspect the image->text bridge of effnet-minilm.", **_HELP)
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate with each task's published metrics.", **_HELP)
app.add_typer(bridge_app, name="bridge")
app.add_typer(eval_app, name="eval")

# One line per verb: the whole command set is readable here.
app.command("index")(index.index)
app.command("search")(search.search)
app.command("info")(info.info)
app.command("remove")(info.remove)
app.command("encoders")(info.encoders)
bridge_app.command("fit")(bridge.bridge_fit)
bridge_app.command("image-prior")(bridge.bridge_image_prior)
app.command("caption")(caption.caption)
app.command("caption-refine")(caption.caption_refine)
app.command("chat")(chat.chat)
app.command("ask")(ask.ask)
app.command("compose")(compose.compose)
app.command("serve")(serve.serve)
app.command("quickstart")(quickstart.quickstart)
eval_app.command("retrieval")(search.eval_retrieval)
eval_app.command("caption")(caption.eval_caption)
eval_app.command("chat")(chat.eval_chat)
eval_app.command("ask")(ask.eval_ask)
eval_app.command("imageref")(compose.eval_imageref)
eval_app.command("judge")(compose.eval_judge)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Mistakes in what the user typed -- a bad option value (click's usage errors)
    or a value the library refuses (:class:`~mmrag.errors.MmragError`, e.g.
    :class:`~mmrag.errors.InvalidInputError`) -- are one line ``error: ...`` and exit 2; any
    other exception is a bug and keeps its traceback."""
    try:  # typer >= 0.2x carries its own copy of click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer on click
        from click import exceptions as cx

    try:
        rc = app(args=argv, standalone_mode=False)
    except getattr(cx, "NoArgsIsHelpError", ()) as e:  # `mmrag` / `mmrag eval` alone: the help
        print(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(2)
    except cx.ClickException as e:
        cmd = e.ctx.command_path if getattr(e, "ctx", None) else "mmrag"
        say(f"{e.format_message()} (see {cmd} --help)")
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted", highlight=False)
        sys.exit(130)
    except MmragError as e:
        say(str(e))
        sys.exit(2)
    except NotImplementedError as e:  # a part without this ability (a user's image-only encoder)
        say(f"not supported by the encoder, store or generator in use: {e or 'NotImplementedError'}")
        sys.exit(2)
    if rc == 130:  # typer turns Ctrl-C into a silent exit 130
        err.print("interrupted", highlight=False)
    sys.exit(rc if isinstance(rc, int) else 0)


def say(message: str) -> None:
    """``error: message`` on stderr, on one line whatever the terminal's width."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
