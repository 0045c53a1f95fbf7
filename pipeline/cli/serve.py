"""``vqgen serve``: a local web page to sample, complete / repair and compress.

Gradio (the ``app`` extra) is imported only when the verb runs: ``vqgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from vqgen.pipeline.cli.common import UsageError, add_verb, positive_float, resolve_device
from vqgen.stage1_vqvae.runtime.errors import MissingInputError, UserError

DEFAULT_PORT = 7860


def add_serve(subs) -> None:
    p = add_verb(subs, "serve", "Serve a local web page to sample, complete / repair and "
                 "compress with a prior and its VQ-VAE (needs the app extra: "
                 "pip install -e \".[app]\").")
    p.add_argument("--prior", default=None,
                   help="the prior: a .ckpt, a pretrained folder or a shipped name (default: "
                   "the shipped mnist, with a picker for every shipped model)")
    p.add_argument("--vqvae", default=None,
                   help="VQ-VAE checkpoint (default: the one recorded in the prior)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 "
                   "serves the network, with no authentication)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0,
                   help="largest file a visitor may upload, in MB (default 10)")
    p.add_argument("--data", default=None,
                   help="data for random images and the model card (default: the VQ-VAE's)")
    p.add_argument("--data-root", default="data", help="where torchvision data sets live")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)


def _check_port(host: str, port: int) -> int:
    """Bind once to fail early (before loading models) on a taken port; returns the port
    to use (a free one for 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as uvicorn binds: a listener still conflicts, a just-closed server's TIME_WAIT not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass a "
                             "free --port (or 0 for any) or another --host") from None
        return s.getsockname()[1]


class _Stop(Exception):
    """Raised in the main thread by SIGTERM so the temp folder is removed."""


def cmd_serve(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise UserError("vqgen serve needs Gradio: pip install -e \".[app]\" (or "
                        "pip install \"vqgen[app]\")")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} must be in 0..65535")
    from vqgen.stage1_vqvae.runtime.pretrained import resolve_model, shipped_models

    shipped = shipped_models()
    others: dict[str, str] = {}
    if args.prior is None:
        if args.vqvae is not None:
            raise UsageError("--vqvae needs --prior (the prior that models its codes)")
        if not shipped:
            raise MissingInputError("no --prior given and no shipped model is installed; pass "
                                    "--prior CKPT (e.g. checkpoints/demo/prior/last.ckpt)")
        args.prior = "mnist" if "mnist" in shipped else shipped[0]
        others = {n: n for n in shipped}
    for flag, path in (("--prior", args.prior), ("--vqvae", args.vqvae)):
        if path is not None and not resolve_model(path).exists():
            raise MissingInputError(f"{flag} {path} does not exist; give a .ckpt file, a "
                                    "pretrained folder or a shipped name")
    port = _check_port(args.host, args.port)
    work = Path(tempfile.mkdtemp(prefix="vqgen-serve-"))
    # every upload and Gradio's own cache live here, removed at exit
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    demo = None
    try:
        from vqgen.pipeline.serve.serving import Server

        server = Server(args.prior, args.vqvae, work, device=resolve_device(args.device),
                        max_upload_mb=args.max_upload_mb, data=args.data,
                        data_root=args.data_root, others=others)
        from vqgen.pipeline.serve.app import build, launch, use_temp_folder

        use_temp_folder(str(work / "gradio"))  # also when Gradio was imported by an earlier server
        demo = build(server)
        launch(demo, args.host, port, args.max_upload_mb, [str(work)])
        local = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else \
            "reachable from the network, no authentication"
        print(f"vqgen serve: http://{args.host}:{port} (bound to {args.host}: {local})")
        print(f"uploads and results: {work} (removed when the server stops; Ctrl-C to stop)",
              flush=True)
        serve_forever(f"http://{args.host}:{port}")
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if demo is not None:
            demo.close()
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        print("vqgen serve: stopped", flush=True)
    return 0


def serve_forever(url: str) -> None:
    """Block until Ctrl-C / SIGTERM (the server runs in Gradio's threads). A test replaces
    this to visit ``url`` and return, which stops the server as Ctrl-C would."""
    while True:
        time.sleep(0.5)


def _raise_stop(signum, frame) -> None:
    raise _Stop()
