"""Plots (PNG, matplotlib's Agg canvas, no pyplot state) and the static ``index.html`` of
``vqgen evaluate``. matplotlib is imported lazily: only the report needs it."""

from __future__ import annotations

import csv
import html
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vqgen.pipeline.formatting import format_number

# (panel title, columns, log y) per run kind; columns a run lacks are left out
CURVE_PANELS: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "vqvae": [
        ("loss (MSE + commitment)", ("train/loss", "train/recon_loss", "val/recon_loss"), True),
        ("held-out PSNR (dB)", ("val/psnr",), False),
        ("codebook usage (fraction of K)", ("val/codebook_usage",), False),
        ("code perplexity", ("val/perplexity",), False),
    ],
    "prior": [
        ("NLL (nats per code)", ("train/loss", "val/nll", "val/nll_uncond"), False),
        ("held-out bits per code", ("val/bits_per_code",), False),
    ],
}


def _figure(width: float, height: float):
    """A matplotlib Figure drawing on an Agg canvas (no global backend switch, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_code_histogram(counts: Sequence[int], path: str | os.PathLike) -> None:
    """Two panels: uses per code index, and the same counts sorted (rank-frequency, log y)."""
    import numpy as np

    c = np.asarray(counts, dtype=np.float64)
    fig = _figure(10, 3.2)
    a, b = fig.subplots(1, 2)
    a.bar(np.arange(c.size), c, width=1.0, color="#4c72b0")
    a.set(title=f"code usage on the held-out split (K={c.size}, {int((c > 0).sum())} used)",
          xlabel="code index", ylabel="count")
    srt = np.sort(c)[::-1]
    b.plot(np.arange(1, c.size + 1), np.where(srt > 0, srt, np.nan), color="#4c72b0")
    b.set(title="sorted (rank-frequency)", xlabel="rank", ylabel="count", yscale="log")
    fig.savefig(path, format="png")


def plot_nll_heatmap(grid: Sequence[Sequence[float]], path: str | os.PathLike, title: str) -> None:
    """Mean NLL (bits) per (row, col) of the code grid, with a colour bar and the values."""
    import numpy as np

    g = np.asarray(grid, dtype=np.float64)
    h, w = g.shape
    fig = _figure(max(4.5, 0.55 * w + 2.0), max(3.5, 0.5 * h + 1.2))
    ax = fig.subplots()
    im = ax.imshow(g, cmap="viridis")
    fig.colorbar(im, ax=ax, label="mean NLL (bits per code)")
    if h * w <= 256:  # numbers stay readable up to 16x16
        mid = (g.max() + g.min()) / 2
        for i in range(h):
            for j in range(w):
                ax.text(j, i, f"{g[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if g[i, j] > mid else "white")
    ax.set(title=title, xlabel="column", ylabel="row")
    ax.title.set_fontsize(9)
    fig.savefig(path, format="png")


def read_training_logs(run_dir: str | os.PathLike) -> tuple[dict[str, list[tuple[int, float]]],
                                                             list[Path]]:
    """Lightning CSVLogger rows of a run: ``run_dir/logs/version_*/metrics.csv``.

    All versions are merged (a resumed run logs into a new version) and sorted by step;
    a later version's value wins at a step logged twice. Returns ({column: [(step, value)]},
    the CSV files read in version order); empty when there are none.
    """
    files = []
    for p in Path(run_dir).glob("logs/version_*/metrics.csv"):
        m = re.fullmatch(r"version_(\d+)", p.parent.name)
        if m and p.is_file():
            files.append((int(m.group(1)), p))
    files.sort()
    merged: dict[str, dict[int, float]] = {}
    for _, p in files:
        with open(p, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.get("step") or ""))
                except ValueError:
                    continue
                for col, text in row.items():
                    if col in ("epoch", "step") or col is None or not text:
                        continue
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        merged.setdefault(col, {})[step] = value
    series = {col: sorted(d.items()) for col, d in merged.items()}
    return series, [p for _, p in files]


def plot_curves(run_dir: str | os.PathLike, kind: str, path: str | os.PathLike) -> dict | None:
    """Plot a run's training curves (panels of ``CURVE_PANELS[kind]``) into ``path``.

    Returns {"csv": files, "columns": plotted, "last": {column: last value}} or None when
    the run has no CSV logs with any of the columns (nothing is written then).
    """
    series, files = read_training_logs(run_dir)
    panels = [(t, [c for c in cols if c in series], logy)
              for t, cols, logy in CURVE_PANELS[kind]]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig = _figure(4.2 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, cols, logy) in zip(axes, panels, strict=True):
        for col in cols:
            steps, values = zip(*series[col], strict=True)
            ax.plot(steps, values, label=col, marker="." if len(steps) < 40 else None)
        ax.set(title=title, xlabel="step")
        ax.title.set_fontsize(9)
        if logy and all(v > 0 for col in cols for _, v in series[col]):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.savefig(path, format="png")
    plotted = [c for _, cols, _ in panels for c in cols]
    return {"csv": [str(p) for p in files], "columns": plotted,
            "last": {c: series[c][-1][1] for c in plotted}, "plot": Path(path).name}


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}code,pre{background:#f5f5f5;padding:.1em .3em}
pre{padding:.6em;overflow-x:auto}.muted{color:#666;font-size:.9em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) or v is None
            cells.append(f'<td class="num">{_e(format_number(v))}</td>' if num else f"<td>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(images: dict, key: str, alt: str) -> str:
    name = images.get(key)
    return f'<p><img src="{_e(name)}" alt="{_e(alt)}"></p>' if name else ""


def write_html(report: dict, path: str | os.PathLike) -> None:
    """The report as one static page (inline CSS, no JS, no network; PNGs by relative path)."""
    s1, s2, wm, sm = (report.get(k) for k in ("stage1", "stage2", "whole_model", "samples"))
    images = report.get("images", {})
    st, data = report["settings"], report["data"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>vqgen evaluate: {_e(data['spec'])}</title><style>{CSS}</style></head><body>",
             "<h1>vqgen evaluate</h1>",
             f"<p class=\"muted\">{_e(data['source'])}<br>VQ-VAE <code>{_e(st['vqvae'])}</code>"
             + (f"<br>prior <code>{_e(st['prior'])}</code>" if st.get("prior") else "")
             + f"<br>seed {_e(st['seed'])}, device {_e(st['device'])}</p>"]

    parts.append("<h2>Stage one: VQ-VAE</h2>")
    if s1:
        parts.append(_table(["metric", "value", "note"], [
            ["images", s1["num_images"], f"{data['split']} split"],
            ["MSE", s1["mse"], "mean over all subpixels, images in [0, 1]"],
            ["PSNR (dB)", s1["psnr_db"], "10 log10(1 / MSE)"],
            ["PSNR (dB), mean per image", s1["psnr_db_mean_per_image"], ""],
            ["SSIM", s1["ssim"], "11x11 Gaussian window, sigma 1.5; mean over images"],
            ["codebook usage", s1["codebook_usage"], f"{s1['codes_used']} of {s1['num_codes']} codes"],
            ["perplexity", s1["perplexity"], f"exp(entropy) of the code histogram, of K={s1['num_codes']}"],
        ]))
        parts.append(_img(images, "reconstructions", "originals and reconstructions"))
        parts.append('<p class="muted">odd rows: held-out originals; even rows: reconstructions</p>')
        parts.append(_img(images, "codes_histogram", "code usage histogram"))

    cmp = report.get("comparison")
    if cmp:
        parts.append("<h2>Stage-one models side by side</h2>")
        parts.append(_table(
            ["model", "PSNR (dB)", "SSIM", "sharpness ratio", "rFD", "bits/dim", "codebook usage",
             "sample FD (VAE: z ~ N(0, I))"],
            [[r["name"], r["psnr_db"], r["ssim"], r["sharpness_ratio"], r["rfd"],
              r["bits_per_dim"], r["codebook_usage"], r.get("sample_fd")] for r in cmp["rows"]]))
        parts.append("<ul>" + "".join(f"<li>{_e(k)}: {_e(v)}</li>"
                                      for k, v in cmp["definitions"].items()) + "</ul>")
        parts.append(_img(images, "comparison", "the same held-out images, reconstructed by each model"))
        parts.append('<p class="muted">first row: held-out originals; then one row per model</p>')

    parts.append("<h2>Stage two: prior</h2>")
    if s2:
        b = s2["baselines"]
        bpc_u = s2["bits_per_code_uncond"]
        rows = [["prior" + (" (given the class)" if s2["conditional"] else ""),
                 s2["nll_nats_per_code"], s2["bits_per_code"]]]
        if s2["conditional"]:
            rows.append(["prior, null class (unconditional)", s2["nll_uncond_nats_per_code"], bpc_u])
        ln2 = math.log(2)
        for name, key in (("unigram: training frequencies, cross-entropy on held-out codes",
                           "unigram_heldout_cross_entropy_bits_per_code"),
                          ("unigram: entropy of the training frequencies",
                           "unigram_train_entropy_bits_per_code"),
                          ("uniform: log2 K", "uniform_bits_per_code")):
            rows.append([name, b[key] * ln2, b[key]])
        parts.append(_table(["model", "nats per code", "bits per code"], rows))
        parts.append(f'<p class="muted">{_e(b["unigram_definition"])}</p>')
        parts.append(_img(images, "nll_heatmap", "per-position NLL heat map"))
    else:
        parts.append("<p>skipped (see notes)</p>")

    parts.append("<h2>Whole model: bits per dimension</h2>")
    if wm:
        parts.append(f"<pre>{_e(wm['formula'])}</pre><p>q(z|x) is one-hot, so KL(q(z|x) || p(z)) = "
                     "-log p(z<sub>q</sub>(x)) and NLL(x) &le; -log p(x | z<sub>q</sub>(x)) - "
                     "log p(z<sub>q</sub>(x)). p(x | z) is a discretized Gaussian over the 256 "
                     "levels of every subpixel, mean = the decoder output, one global sigma "
                     f"chosen on the grid {_e(wm['sigma_grid'])} to minimise the bound "
                     f"(on {_e(wm['sigma_chosen_on'])}). The prior term uses the {_e(wm['prior'])} "
                     "prior.</p>")
        rows = [["bound (bits/dim)", wm["bits_per_dim"]],
                ["  prior part: -log2 p(z) / (C*H*W)", wm["prior_bits_per_dim"]],
                ["  reconstruction part: -log2 p(x|z) / (C*H*W)", wm["recon_bits_per_dim"]],
                ["sigma (on the [0, 1] scale)", wm["sigma"]],
                ["C*H*W", wm["dims"]]]
        if wm.get("bits_per_dim_given_class") is not None:
            rows.append(["bound given the class, -log2 p(x | y) (bits/dim)",
                         wm["bits_per_dim_given_class"]])
        parts.append(_table(["quantity", "value"], rows))
    else:
        parts.append("<p>skipped (see notes)</p>")

    parts.append("<h2>Samples</h2>")
    if sm:
        parts.append(_samples_html(sm, st))
        parts.append(_img(images, "samples_conditional", "class-conditional samples"))
        if images.get("samples_conditional"):
            parts.append('<p class="muted">class-conditional samples, one row per class</p>')
        parts.append(_img(images, "samples_unconditional", "unconditional samples"))
        parts.append('<p class="muted">unconditional samples (no class, guidance 1)</p>')
    else:
        parts.append("<p>skipped (see notes)</p>")

    parts.append("<h2>Training curves</h2>")
    for kind in ("vqvae", "prior"):
        cur = report.get("curves", {}).get(kind)
        if cur:
            parts.append(f"<h3>{'stage one (VQ-VAE)' if kind == 'vqvae' else 'stage two (prior)'}"
                         f"</h3>{_img(images, f'curves_{kind}', f'{kind} training curves')}"
                         f"<p class=\"muted\">from {_e(', '.join(cur['csv']))}</p>")
    if not any(report.get("curves", {}).values()):
        parts.append("<p>no CSV logs found (see notes)</p>")

    parts.append("<h2>Notes</h2>")
    notes = report.get("notes") or []
    parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes
                 else "<p>none</p>")
    t = report.get("timings_s", {})
    parts.append(f'<p class="muted">wall time (s): {_e(", ".join(f"{k} {v}" for k, v in t.items()))}'
                 "</p></body></html>\n")
    Path(path).write_text("\n".join(p for p in parts if p), encoding="utf-8")


def _samples_html(sm: dict, st: dict) -> str:
    parts = []
    refs = sm.get("references")
    if refs:
        clf = sm.get("classifier", {})
        parts.append(f"<p>Sample quality is scored by a small CNN classifier trained on the "
                     f"training split (cached at <code>{_e(clf.get('path'))}</code>); its held-out "
                     f"accuracy is <b>{refs['classifier_heldout_accuracy']:.2%}</b>. The Fréchet "
                     f"distance (FD) compares its {clf.get('config', {}).get('features', '')}-dim "
                     "penultimate features with those of the whole held-out split "
                     f"({refs['num_eval_images']} images). Lower is better.</p>")
        rows = [["real training images (floor)", refs["num_reference"], refs["fd_real_vs_real"],
                 refs.get("precision_real"), refs.get("recall_real"), "", ""],
                ["training images, 3x3 box blur (slightly off)", refs["num_reference"],
                 refs["fd_blurred_vs_real"], refs.get("precision_blurred"),
                 refs.get("recall_blurred"), "", ""]]
        cond, unc = sm.get("conditional"), sm.get("unconditional")
        if cond:
            rows.append([f"class-conditional samples (guidance {cond['guidance']:g}, "
                         f"temperature {cond['temperature']:g})", cond["num"], cond.get("fd"),
                         cond.get("precision"), cond.get("recall"), cond.get("class_accuracy"), ""])
        if unc:
            rows.append([f"unconditional samples (temperature {unc['temperature']:g})", unc["num"],
                         unc.get("fd"), unc.get("precision"), unc.get("recall"), "",
                         unc.get("class_entropy_fraction_of_log_k")])
        parts.append(_table(["images", "N", "FD to held-out", "precision", "recall",
                             "classified as requested class", "class entropy / log K"], rows))
        parts.append('<p class="muted">precision: fraction of the images inside the held-out '
                     "images' feature manifold (fidelity); recall: fraction of held-out images "
                     "inside theirs (diversity); k-NN radii with k = 3 in the classifier's "
                     "feature space (Kynkäänniemi et al. 2019).</p>")
        if unc and unc.get("class_entropy_nats") is not None:
            parts.append(f'<p class="muted">unconditional predicted-class entropy '
                         f'{unc["class_entropy_nats"]:.3f} nats (held-out real images: '
                         f'{refs["heldout_class_entropy_nats"]:.3f}); 1.0 on the fraction means '
                         "every class equally often.</p>")
    else:
        parts.append("<p>no classifier (see notes); samples are shown unscored.</p>")
    inc = sm.get("inception")
    if inc:
        rows = [[f"{kind} samples", inc[kind]["num_fake"], inc[kind]["fid"], inc[kind]["kid_mean"],
                 inc[kind]["kid_std"]] for kind in ("conditional", "unconditional") if kind in inc]
        parts.append("<p><b>Inception FID / KID</b> (the numbers papers quote; "
                     f"{_e(inc['implementation'])}; weights <code>{_e(inc['weights'])}</code>, "
                     f"sha256 {_e(inc['weights_sha256'][:16])}...), against the "
                     f"{_e(inc['reference'])}. The FD above uses the project's own classifier "
                     "instead and is not comparable with published FIDs.</p>")
        parts.append(_table(["images", "N", "Inception FID", "KID mean", "KID std"], rows))
    return "".join(parts)
