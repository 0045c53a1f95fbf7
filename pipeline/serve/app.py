"""The ``vqgen serve`` page (Gradio): Sample, Complete / repair, Compress, Model card.

Imported only by the ``serve`` verb (Gradio is the optional ``app`` extra). The work is
done by :class:`pipeline.serve.serving.Server`; this module lays out the page and turns a
:class:`~stage1_vqvae.runtime.errors.UserError` (or any failure) into a one-line error in
the page, never a traceback. Offline: analytics off, system fonts only (the default theme
would fetch Google Fonts).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vqgen.pipeline.serve.serving import NO_CLASS, Server, page_message  # noqa: E402
from vqgen.stage1_vqvae.data.images import MAX_INPUT_PIXELS  # noqa: E402
from vqgen.stage1_vqvae.runtime.errors import UserError  # noqa: E402

# Gradio decodes the editor's upload before any handler runs: Pillow refuses, at open and
# before decoding, an image over twice its MAX_IMAGE_PIXELS (a 13000x13000 PNG took the
# server to 6-8 GB), so half our limit makes the refusal start at the limit
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS // 2
TOO_LARGE = (f"that image has over {MAX_INPUT_PIXELS // 10**6} M pixels, the limit for "
             "uploads; shrink it first (the model reads far fewer pixels)")


def limit_pixels(editor: gr.ImageEditor) -> gr.ImageEditor:
    """``editor`` whose upload over MAX_INPUT_PIXELS is a one-line page error. Its own
    ``preprocess`` is wrapped (a subclass would make Gradio write a .pyi beside this file)."""
    inner = editor.preprocess

    @wraps(inner)
    def preprocess(payload):
        try:
            return inner(payload)
        except Image.DecompressionBombError:
            raise gr.Error(TOO_LARGE, print_exception=False) from None

    editor.preprocess = preprocess  # type: ignore[method-assign]
    return editor


CSS = """
.pixelated img, img.pixelated, .pixelated canvas { image-rendering: pixelated; }
"""


def theme() -> gr.themes.Theme:
    """The default look with system fonts: nothing is fetched from the internet."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def _errors_in_page(fn: Callable) -> Callable:
    """Show a UserError's message as the page's error line; anything else as a one-line
    internal error (its traceback goes to the server's stderr)."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as e:
            raise gr.Error(page_message(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - the page must get one line, not a traceback
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(page_message(f"internal error ({type(e).__name__}: {e}); see the "
                                        "server's log"), print_exception=False) from None
    return run


def _optional_int(v: float | None) -> int | None:
    return int(v) if v else None


def _painted_mask(value: dict | None) -> np.ndarray | None:
    """The editor's layers -> bool (H, W), True where anything was painted."""
    layers = (value or {}).get("layers") or []
    masks = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in layers if layer is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out | m
    return out


def build(server: Server) -> gr.Blocks:
    """The page for ``server``'s checkpoints."""
    server.use(None)
    choices = server.class_choices()
    default_class = choices[0]
    multi = len(choices) > 1
    guidance0, temperature0 = server.sample_defaults(default_class)
    models = server.model_choices()

    with gr.Blocks(analytics_enabled=False, title="vqgen") as demo:
        with gr.Row():
            header = gr.Markdown(f"## vqgen &nbsp; {server.title()}", elem_id="header")
            model = gr.Dropdown(models, value=models[0], label="model", visible=len(models) > 1,
                                interactive=len(models) > 1, elem_id="model-picker")
        with gr.Tab("Sample", id="sample"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    s_class = gr.Dropdown(choices, value=default_class, label="class",
                                          interactive=multi, elem_id="sample-class")
                    s_num = gr.Slider(1, 64, value=16, step=1, label="number",
                                      elem_id="sample-num")
                    s_temp = gr.Slider(0.05, 2.0, value=temperature0, step=0.05,
                                       label="temperature", elem_id="sample-temperature")
                    s_topk = gr.Number(0, precision=0, minimum=0, label="top-k (0 = off)",
                                       elem_id="sample-topk")
                    s_topp = gr.Slider(0.05, 1.0, value=1.0, step=0.05,
                                       label="top-p (1 = off)", elem_id="sample-topp")
                    s_guid = gr.Slider(0.0, 5.0, value=guidance0, step=0.25,
                                       label="guidance (1 = none; needs a class)",
                                       elem_id="sample-guidance")
                    s_seed = gr.Number(0, precision=0, label="seed", elem_id="sample-seed")
                    s_go = gr.Button("Sample", variant="primary", elem_id="sample-button")
                with gr.Column(scale=3):
                    s_status = gr.Markdown("", elem_id="sample-status")
                    s_gallery = gr.Gallery(label="samples", columns=8, height="auto",
                                           object_fit="contain", elem_id="sample-gallery",
                                           elem_classes=["pixelated"], interactive=False)
                    s_zip = gr.File(label="download: PNGs + codes.npy", elem_id="sample-zip")

        with gr.Tab("Complete / repair", id="complete"):
            with gr.Row():
                with gr.Column(scale=2, min_width=300):
                    c_editor = limit_pixels(gr.ImageEditor(
                        type="pil", image_mode="RGBA", format="png", label="image (paint the "
                        f"region to regenerate; up to {MAX_INPUT_PIXELS // 10**6} M pixels)",
                        sources=["upload"], transforms=["crop"],
                        layers=False, canvas_size=(32 * 8, 32 * 8),
                        brush=gr.Brush(default_size=24, colors=["#ff3030"],
                                       color_mode="fixed"),
                        elem_id="complete-editor", elem_classes=["pixelated"]))
                    c_random = gr.Button("random held-out image", elem_id="complete-random")
                    c_caption = gr.Markdown("", elem_id="complete-caption")
                with gr.Column(scale=1, min_width=240):
                    c_class = gr.Dropdown(choices, value=NO_CLASS, label="class (optional)",
                                          interactive=multi, elem_id="complete-class")
                    c_num = gr.Slider(1, 32, value=8, step=1, label="completions",
                                      elem_id="complete-num")
                    c_temp = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="temperature")
                    c_seed = gr.Number(0, precision=0, label="seed", elem_id="complete-seed")
                    c_frac = gr.Slider(0.05, 1.0, value=0.2, step=0.05,
                                       label="repair: share of most surprising codes")
                    c_go = gr.Button("Complete painted region", variant="primary",
                                     elem_id="complete-button")
                    c_repair = gr.Button("Repair (the prior picks)", elem_id="repair-button")
            c_status = gr.Markdown("", elem_id="complete-status")
            c_gallery = gr.Gallery(label="completions", columns=8, height="auto",
                                   object_fit="contain", elem_id="complete-gallery",
                                   elem_classes=["pixelated"], interactive=False)
            with gr.Row():
                c_heat = gr.Image(label="surprisal (bits per code, white = most)",
                                  type="filepath", interactive=False, elem_id="complete-heat",
                                  elem_classes=["pixelated"])
                c_overlay = gr.Image(label="mask on the code grid", type="filepath",
                                     interactive=False, elem_id="complete-overlay",
                                     elem_classes=["pixelated"])
                c_zip = gr.File(label="download: PNGs + codes.npy + inpaint.json")

        with gr.Tab("Compress", id="compress"):
            with gr.Row():
                with gr.Column():
                    z_files = gr.File(label="images to compress", file_count="multiple",
                                      type="filepath", elem_id="compress-files")
                    z_go = gr.Button("Compress", variant="primary", elem_id="compress-button")
                    z_status = gr.Markdown("", elem_id="compress-status")
                    z_table = gr.Dataframe(
                        headers=["image", "ours bits", "PSNR dB", "PNG bits",
                                 "JPEG bits @ PSNR", "WebP bits @ PSNR"],
                        interactive=False, elem_id="compress-table")
                    z_out = gr.File(label="download .vqz", elem_id="compress-vqz")
                with gr.Column():
                    d_file = gr.File(label=".vqz to decode", file_count="single",
                                     type="filepath", elem_id="decompress-file")
                    d_go = gr.Button("Decompress", elem_id="decompress-button")
                    d_status = gr.Markdown("", elem_id="decompress-status")
                    d_gallery = gr.Gallery(label="decoded", columns=8, height="auto",
                                           elem_id="decompress-gallery",
                                           elem_classes=["pixelated"], interactive=False)

        with gr.Tab("Model card", id="card"):
            m_go = gr.Button("Load model card", elem_id="card-button")
            m_text = gr.Markdown("", elem_id="card-text")
            with gr.Row():
                m_usage = gr.Image(label="codebook usage", type="filepath", interactive=False)
                m_recon = gr.Image(label="held-out reconstructions", type="filepath",
                                   interactive=False, elem_classes=["pixelated"])

        # ------------------------------------------------------------------ handlers
        # progress shows on the result, not the status line: the status changes only
        # when a result (or an error) arrives

        # going from a class to no class (or back) brings `vqgen sample`'s defaults for it (2 /
        # 0.9 with a class, 1 / 1 without); another class keeps what the user set
        s_conditional = gr.State(default_class != NO_CLASS)

        @_errors_in_page
        def class_defaults(name, cls, was_conditional):
            server.use(name)
            conditional = cls != NO_CLASS
            if conditional == was_conditional:
                return gr.update(), gr.update(), conditional
            g, t = server.sample_defaults(cls)
            return gr.update(value=g), gr.update(value=t), conditional

        s_class.change(class_defaults, [model, s_class, s_conditional], [s_guid, s_temp, s_conditional])

        @_errors_in_page
        def pick_model(name):
            server.use(name)
            cls = server.class_choices()
            g, t = server.sample_defaults(cls[0])
            return (f"## vqgen &nbsp; {server.title()}",
                    gr.update(choices=cls, value=cls[0], interactive=len(cls) > 1),
                    gr.update(choices=cls, value=NO_CLASS, interactive=len(cls) > 1),
                    gr.update(value=g), gr.update(value=t), cls[0] != NO_CLASS)

        @_errors_in_page
        def do_sample(name, cls, num, temp, top_k, top_p, guidance, seed):
            server.use(name)
            r = server.sample(cls, int(num), float(temp), _optional_int(top_k),
                              None if top_p >= 1 else float(top_p), float(guidance),
                              int(seed or 0))
            return [str(p) for p in r.images], str(r.extra["zip"]), r.status

        s_go.click(do_sample, [model, s_class, s_num, s_temp, s_topk, s_topp, s_guid, s_seed],
                   [s_gallery, s_zip, s_status], show_progress_on=[s_gallery])

        @_errors_in_page
        def do_random(name, seed):
            server.use(name)
            path, caption = server.random_image(None)
            return str(path), caption

        c_random.click(do_random, [model, c_seed], [c_editor, c_caption])

        def completion(name, value, cls, num, temp, seed, fraction):
            server.use(name)
            if not value or value.get("background") is None:
                raise UserError("no image: upload one or press \"random held-out image\"")
            folder = server.new_folder("upload")
            path = folder / "input.png"
            value["background"].save(path, format="PNG")
            mask = None if fraction is not None else _painted_mask(value)
            r = server.complete(path, mask, num=int(num), class_choice=cls,
                                temperature=float(temp), seed=int(seed or 0),
                                repair_fraction=fraction)
            return ([str(p) for p in r.images], str(r.extra["heat"]), str(r.extra["overlay"]),
                    str(r.extra["zip"]), r.status)

        outs = [c_gallery, c_heat, c_overlay, c_zip, c_status]
        c_go.click(_errors_in_page(lambda m, v, c, n, t, s: completion(m, v, c, n, t, s, None)),
                   [model, c_editor, c_class, c_num, c_temp, c_seed], outs,
                   show_progress_on=[c_gallery])
        c_repair.click(_errors_in_page(lambda m, v, c, n, t, s, f: completion(m, v, c, n, t, s, f)),
                       [model, c_editor, c_class, c_num, c_temp, c_seed, c_frac], outs,
                       show_progress_on=[c_gallery])

        @_errors_in_page
        def do_compress(name, files):
            server.use(name)
            r = server.compress(list(files or []))
            return r.table, str(r.extra["vqz"]), r.status

        z_go.click(do_compress, [model, z_files], [z_table, z_out, z_status],
                   show_progress_on=[z_table])

        @_errors_in_page
        def do_decompress(name, file):
            server.use(name)
            if not file:
                raise UserError("no .vqz uploaded; drop a file made by vqgen compress")
            r = server.decompress(file)
            return [str(p) for p in r.images], r.status

        d_go.click(do_decompress, [model, d_file], [d_gallery, d_status],
                   show_progress_on=[d_gallery])

        @_errors_in_page
        def do_card(name):
            server.use(name)
            r = server.model_card()
            return (r.status, str(r.extra["usage"]) if "usage" in r.extra else None,
                    str(r.extra["recon"]) if "recon" in r.extra else None)

        m_go.click(do_card, [model], [m_text, m_usage, m_recon])
        model.change(pick_model, [model], [header, s_class, c_class, s_guid, s_temp, s_conditional])
    return demo


def use_temp_folder(folder: str) -> None:
    """Point Gradio's temp folder at ``folder``. Gradio reads GRADIO_TEMP_DIR once, when it is
    first imported, so a second server in the same process would otherwise write into the
    first one's (removed) folder."""
    os.environ["GRADIO_TEMP_DIR"] = folder
    for name in ("gradio.routes", "gradio.route_utils", "gradio.mcp", "gradio.screen_recording_utils"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "DEFAULT_TEMP_DIR"):
            mod.DEFAULT_TEMP_DIR = folder


def launch(demo: gr.Blocks, host: str, port: int, max_upload_mb: float,
           allowed: list[str]) -> None:
    """Start serving in a background thread (returns once the server listens)."""
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                share=False, inbrowser=False, show_error=False, footer_links=[],
                max_file_size=int(max_upload_mb * 1024 * 1024), allowed_paths=allowed, theme=theme(),
                css=CSS, ssr_mode=False, pwa=False, mcp_server=False,
                enable_monitoring=False)
