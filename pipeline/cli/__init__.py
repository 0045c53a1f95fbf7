"""The ``vqgen`` command line. ``main(argv) -> exit code``; heavy imports happen per verb.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 130 interrupted.
An internal error (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from vqgen.pipeline.cli.codec import add_compress, add_decompress
from vqgen.pipeline.cli.demo import add_demo
from vqgen.pipeline.cli.evaluate import add_evaluate
from vqgen.pipeline.cli.export import add_export
from vqgen.pipeline.cli.inpaint import add_inpaint, add_repair
from vqgen.pipeline.cli.serve import add_serve
from vqgen.pipeline.cli.stage1 import add_decode, add_encode, add_reconstruct, add_train_vqvae
from vqgen.pipeline.cli.stage2 import add_sample, add_train_prior
from vqgen.pipeline.defaults import EXAMPLES
from vqgen.stage1_vqvae.runtime.errors import UserError
from vqgen.stage1_vqvae.runtime.outputs import release_output_locks

ADDERS: list[Callable] = [add_train_vqvae, add_encode, add_reconstruct, add_decode, add_train_prior,
                          add_sample, add_demo, add_evaluate, add_compress, add_decompress,
                          add_inpaint, add_repair, add_serve, add_export]


class VerbParser(argparse.ArgumentParser):
    """A verb's parser: a bad flag value is one line naming the flag (the project's rule for
    bad input), not argparse's usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgen",
        description="Two-stage image generation: a VQ-VAE and a gated PixelCNN prior over its codes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {EXAMPLES[k]}" for k in EXAMPLES if k in _verbs()),
    )
    subs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=VerbParser)
    subs.required = True
    for add in ADDERS:
        add(subs)
    return parser


def _verbs() -> set[str]:
    return {f.__name__[4:].replace("_", "-") for f in ADDERS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vqgen`` with ``argv`` (default sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return int(args.func(args))
    # user errors: ours, a path the OS could not open, and Lightning's misconfiguration
    # (bad --accelerator / --devices / --precision). Anything else is a bug: traceback.
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            MisconfigurationException) as e:
        print(f"vqgen {args.verb}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception:
        print(f"vqgen {args.verb}: internal error (a bug, not your input); please report it "
              "with the traceback below", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print(f"vqgen {args.verb}: interrupted; {_after_interrupt(args.verb)}", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
        release_output_locks()  # the next command (in this process or another) may claim it


def _after_interrupt(verb: str) -> str:
    """What a Ctrl-C leaves: only training and the demo resume; every other verb commits its
    output at the end, so nothing of it was written (inpaint said "re-run to continue")."""
    if verb in ("train-vqvae", "train-prior"):
        return "add --resume to the same command to continue from the last checkpoint"
    if verb == "demo":
        return "re-run the same command to continue (finished stages are kept)"
    return "nothing was written; run the command again to start over"


def _close_process_group() -> None:
    """Destroy a DDP run's process group (Lightning leaves it open) while the interpreter
    is alive: otherwise gloo's threads can outlive it and abort a run that succeeded
    (SIGABRT, "terminate called without an active exception")."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def one_line(e: BaseException) -> str:
    """The first line of an error's message; for one re-raised from a DataLoader worker
    ("Caught DataError in DataLoader worker process 0." + the worker's traceback), the
    original message, which is the traceback's last line."""
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(e).__name__


def console_main() -> None:
    sys.exit(main())
