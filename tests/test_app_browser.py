"""``vqgen serve`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright's
Python API; no Playwright browser download). One server on tiny checkpoints for the module,
started as the README says (``vqgen serve --prior ...``) on a free port.

Skipped only where no Chromium (or Playwright / Gradio) can be had; under CI (``CI`` set)
a missing browser is a failure. Screenshots go to each test's tmp folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgen.pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("VQGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DEMO_PRIOR = Path("/work/runs/demo/prior/last.ckpt")


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    msg = (f"{what} is not available; install it (README set-up: sudo apt-get install "
           "chromium; pip install -e \".[dev]\")")
    if os.environ.get("CI"):
        pytest.fail(msg + " -- CI must run the browser tests")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A ``vqgen serve`` subprocess: its URL and temp folder."""

    def __init__(self, prior: Path | None, log: Path) -> None:
        self.prior = prior
        self.port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self.log = log
        given = [] if prior is None else ["--prior", str(prior)]  # None: as `vqgen serve`
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vqgen.pipeline", "serve", *given,
             "--port", str(self.port), "--device", "cpu", "--max-upload-mb", "1"],
            cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text()
            m = re.search(r"uploads and results: (\S+)", text)
            if m:
                self.url = re.search(r"(http://127\.0\.0\.1:\d+)", text).group(1)
                self.work = Path(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"vqgen serve did not start:\n{text}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("Playwright (pip install playwright)", False)
    _need(f"Chromium ({CHROMIUM})", Path(CHROMIUM).is_file())
    import importlib.util

    _need("Gradio (the app extra)", importlib.util.find_spec("gradio") is not None)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(browser, tiny_prior_run: Path, tmp_path_factory: pytest.TempPathFactory):
    s = Served(tiny_prior_run / "last.ckpt", tmp_path_factory.mktemp("serve") / "log.txt")
    yield s
    s.stop()
    # uploads and results are removed when the server stops
    assert not s.work.exists(), f"{s.work} was left behind"
    assert "Traceback" not in s.log.read_text().split("vqgen serve: stopped")[-1]


def _page(browser, served: Served, tmp_path: Path):
    """A new page on the server, recording every request that leaves it."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.outside = []  # type: ignore[attr-defined]

    def record(req):
        if not req.url.startswith((served.url, "data:", "blob:")):
            page.outside.append(req.url)  # type: ignore[attr-defined]

    page.on("request", record)
    page.goto(served.url)
    page.wait_for_selector("#sample-button")
    return page


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def _gallery_bytes(page, elem_id: str) -> list[bytes]:
    srcs = page.eval_on_selector_all(f"#{elem_id} img", "els => els.map(e => e.src)")
    return [page.request.get(s).body() for s in srcs]


def _wait_images(page, elem_id: str, n: int, status_id: str, old_status: str,
                 timeout: float = 60_000) -> None:
    """Until the status line changed and n images of the gallery are loaded."""
    page.wait_for_function(
        """([g, n, s, old]) => {
            const st = document.querySelector('#' + s);
            const imgs = [...document.querySelectorAll('#' + g + ' img')];
            return st && st.innerText.trim() !== old && imgs.length >= n
                && imgs.every(i => i.complete && i.naturalWidth > 0);
        }""", arg=[elem_id, n, status_id, old_status], timeout=timeout)


def _upload(page, elem_id: str, path: Path) -> None:
    """Choose a file in a file component and wait until it lists it. A choice made while
    the freshly shown tab is still mounting is sometimes dropped: choose again then, after
    clearing the component (a choice that was only slow to show would otherwise be sent
    twice by a multi-file component)."""
    for attempt in range(3):
        clear = page.locator(f"#{elem_id} button[aria-label='Clear']")
        if attempt and clear.count():
            clear.first.click()
        page.set_input_files(f"#{elem_id} input[type=file]", str(path))
        try:
            page.wait_for_selector(f"#{elem_id} :text('{path.name}')", timeout=10_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try once more
            continue
    raise AssertionError(f"{path.name} did not show up in #{elem_id}")


def _paint_a_random_item(page) -> None:
    """Complete / repair tab: load a random held-out item and paint one diagonal brush
    stroke across the middle of the canvas."""
    page.get_by_role("tab", name="Complete / repair").click()
    page.click("#complete-random")
    page.wait_for_function("document.querySelector('#complete-caption').innerText"
                           ".includes('validation item')")
    page.click("#complete-editor button[aria-label='Brush']")
    canvas = page.locator("#complete-editor canvas").first.bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx - 50, cy - 10)
    page.mouse.down()
    for k in range(15):
        page.mouse.move(cx - 50 + 5 * k, cy - 10 + k)
    page.mouse.up()


def _status(page, elem_id: str) -> str:
    return page.inner_text(f"#{elem_id}").strip()


def _cli_sample(prior: Path, out: Path, cls: str, temperature: str, seed: int) -> list[bytes]:
    assert main(["sample", "--prior", str(prior), "--num", "16", "--class", cls,
                 "--temperature", temperature, "--seed", str(seed), "--device", "cpu",
                 "--out", str(out)]) == 0
    return [(out / f"{i:06d}.png").read_bytes() for i in range(16)]


def _click_sample(page, cls: str, temperature: str, seed: int) -> str:
    page.click("#sample-class input")
    page.locator("ul.option-list li", has_text=re.compile(rf"^[\s✓]*{re.escape(cls)}\s*$")).first.click()
    _set_number(page, "sample-temperature", temperature)
    page.locator("#sample-seed input").fill(str(seed))
    page.locator("#sample-seed input").press("Tab")
    old = _status(page, "sample-status")
    page.click("#sample-button")
    return old


# ------------------------------------------------------------------------------ tests


def test_sample_in_two_tabs_shows_the_cli_bytes_offline(browser, served, tiny_prior_run,
                                                        tmp_path):
    """Change class and temperature, press sample in two tabs at once: each shows the PNGs
    `vqgen sample` writes for its own seed, byte for byte; the download holds the same
    codes.npy; nothing is fetched from outside the server."""
    prior = tiny_prior_run / "last.ckpt"
    a, b = _page(browser, served, tmp_path), _page(browser, served, tmp_path)
    old_a = _click_sample(a, "3", "0.7", 11)
    old_b = _click_sample(b, "5", "1.3", 12)
    _wait_images(a, "sample-gallery", 16, "sample-status", old_a)
    _wait_images(b, "sample-gallery", 16, "sample-status", old_b)
    a.screenshot(path=str(tmp_path / "sample_a.png"), full_page=True)
    b.screenshot(path=str(tmp_path / "sample_b.png"), full_page=True)
    assert "class 3, seed 11" in _status(a, "sample-status")
    assert "class 5, seed 12" in _status(b, "sample-status")
    shown_a, shown_b = _gallery_bytes(a, "sample-gallery"), _gallery_bytes(b, "sample-gallery")
    assert shown_a == _cli_sample(prior, tmp_path / "cli_a", "3", "0.7", 11)
    assert shown_b == _cli_sample(prior, tmp_path / "cli_b", "5", "1.3", 12)
    # the download button's zip: the same PNGs and codes.npy as the CLI
    href = a.locator("#sample-zip a").first.get_attribute("href")
    with zipfile.ZipFile(io.BytesIO(a.request.get(href).body())) as z:
        assert z.read("codes.npy") == (tmp_path / "cli_a" / "codes.npy").read_bytes()
        assert z.read("000015.png") == shown_a[15]
    # offline: no request left the server, and the page names no external script or style
    assert a.outside == [] and b.outside == [], a.outside + b.outside
    html = a.request.get(served.url).text()
    external = re.findall(r"""<(?:script|link)[^>]+(?:src|href)=["'](https?://[^"']+)""", html)
    assert [u for u in external if not u.startswith(served.url)] == []
    a.close()
    b.close()


def test_paint_a_stroke_and_complete(browser, served, tmp_path):
    """A random held-out image, one brush stroke, complete: 8 completions appear, only the
    painted code cells were regenerated, and they are `vqgen inpaint --image --mask`'s
    files for the image and mask the page sent."""
    page = _page(browser, served, tmp_path)
    _paint_a_random_item(page)
    page.screenshot(path=str(tmp_path / "painted.png"))
    old = _status(page, "complete-status")
    page.click("#complete-button")
    _wait_images(page, "complete-gallery", 8, "complete-status", old)
    page.wait_for_selector("#complete-overlay img")
    page.screenshot(path=str(tmp_path / "completed.png"), full_page=True)
    m = re.search(r"8 completions \(seed 0\) of (\d+) of (\d+) codes", _status(page, "complete-status"))
    assert m, _status(page, "complete-status")
    assert 0 < int(m.group(1)) < int(m.group(2)), "the stroke should mask some, not all, codes"
    shown = _gallery_bytes(page, "complete-gallery")
    folder = max(served.work.glob("results/complete-*"), key=lambda p: p.stat().st_mtime)
    mask = np.asarray(Image.open(folder / "mask.png")) > 0
    assert 0 < mask.mean() < 0.5, "the mask is the painted stroke"
    out = tmp_path / "cli"
    assert main(["inpaint", "--prior", str(served.prior), "--image",
                 str(folder / "input.png"), "--mask", str(folder / "mask.png"), "--num", "8",
                 "--seed", "0", "--device", "cpu", "--out", str(out)]) == 0
    assert shown == [(out / f"000000_{k}.png").read_bytes() for k in range(8)]
    # repair: the prior picks the region (20% of the codes by default)
    old = _status(page, "complete-status")
    page.click("#repair-button")
    page.wait_for_function("([s, old]) => document.querySelector('#' + s).innerText.trim() "
                           "!== old", arg=["complete-status", old], timeout=60_000)
    assert re.search(r"completions \(seed 0\) of 10 of 49 codes", _status(page, "complete-status"))
    assert page.outside == []
    page.close()


def test_compress_upload_errors_and_decode(browser, served, tiny_vqvae_run, tmp_path):
    """Upload a PNG and compress: a row of bits (ours, PNG, JPEG / WebP at our PSNR) and a
    .vqz that `vqgen decompress` reads; a file that is not an image gives a one-line error
    in the page and the server keeps serving; the .vqz decodes in the page too."""
    from vqgen.stage1_vqvae.data import build_dataset
    from vqgen.stage1_vqvae.runtime.grid import save_png

    ds = build_dataset("mnist5k", "val")
    png = tmp_path / "digit.png"
    save_png(ds[0][0], png)
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all\n")
    page = _page(browser, served, tmp_path)
    page.get_by_role("tab", name="Compress").click()
    page.wait_for_selector("#compress-button")

    # not an image: one visible line, no traceback
    _upload(page, "compress-files", fake)
    page.click("#compress-button")
    toast = page.locator(".toast-body", has_text="not an image").first
    toast.wait_for(timeout=30_000)
    text = toast.inner_text()
    assert "Traceback" not in text and "File \"" not in text, text
    lines = [line for line in text.splitlines() if "not an image" in line]
    assert len(lines) == 1 and lines[0].startswith("notes.png is not an image"), text
    assert str(served.work) not in text, "no server paths in the page"
    page.screenshot(path=str(tmp_path / "error.png"))

    # a real PNG afterwards: the server still serves
    page.locator("#compress-files button[aria-label='Clear']").first.click()
    _upload(page, "compress-files", png)
    old = _status(page, "compress-status")
    page.click("#compress-button")
    page.wait_for_function("([s, old]) => document.querySelector('#' + s).innerText.trim() "
                           "!== old", arg=["compress-status", old], timeout=60_000)
    page.wait_for_function("document.querySelector('#compress-table').innerText"
                           ".includes('digit.png')")
    page.screenshot(path=str(tmp_path / "compressed.png"), full_page=True)
    rows = page.evaluate("[...document.querySelectorAll('#compress-table tr')].map(r => "
                         "[...r.querySelectorAll('td')].map(c => c.textContent.trim()))")
    row = next(r for r in rows if r and r[0] == "digit.png")
    assert row[0] == "digit.png"
    ours, psnr, png_bits = float(row[1]), float(row[2]), float(row[3])
    assert 0 < ours < png_bits, "ours should beat lossless PNG on a digit"
    assert psnr > 0
    href = page.locator("#compress-vqz a").first.get_attribute("href")
    vqz = tmp_path / "up.vqz"
    vqz.write_bytes(page.request.get(href).body())
    assert main(["decompress", str(vqz), "--out", str(tmp_path / "dec")]) == 0
    assert json.loads((tmp_path / "dec" / "decoded.json").read_text())["names"] == ["digit.png"]

    # and the .vqz decodes in the page
    _upload(page, "decompress-file", vqz)
    old = _status(page, "decompress-status")
    page.click("#decompress-button")
    _wait_images(page, "decompress-gallery", 1, "decompress-status", old)
    assert _gallery_bytes(page, "decompress-gallery") == [
        (tmp_path / "dec" / "digit.png").read_bytes()]
    assert page.outside == []
    page.close()


def _slider(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").first.input_value())


def test_no_flags_serves_the_shipped_models_with_the_cli_defaults(browser, tmp_path):
    """`vqgen serve` alone: the shipped MNIST pair, named by its model card, a picker for
    every shipped model, and the Sample tab opens with `vqgen sample --class`'s guidance and
    temperature (1 / 1 once no class is chosen); picking another model changes the header and
    the classes."""
    from vqgen.pipeline import defaults as D
    from vqgen.stage1_vqvae.runtime.pretrained import shipped_models

    served = Served(None, tmp_path / "log.txt")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(served.url)
        page.wait_for_selector("#sample-button")
        assert "mnist · trained on mnist5k" in _status(page, "header")
        assert (_slider(page, "sample-guidance"), _slider(page, "sample-temperature")) == (
            D.SAMPLE_GUIDANCE, D.SAMPLE_TEMPERATURE)
        page.click("#sample-class input")
        page.locator("ul.option-list li", has_text="(no class)").first.click()
        page.wait_for_function("document.querySelector('#sample-guidance input[type=number]')"
                               ".value === '1'")
        assert _slider(page, "sample-temperature") == 1.0
        others = [n for n in shipped_models() if n != "mnist"]
        if others:
            page.click("#model-picker input")
            page.locator("ul.option-list li", has_text=others[0]).first.click()
            page.wait_for_function(f"document.querySelector('#header').innerText.includes('{others[0]} ·')",
                                   timeout=60_000)
            page.click("#sample-class input")
            names = page.eval_on_selector_all("ul.option-list li", "els => els.map(e => e.innerText.trim())")
            assert "airplane" in " ".join(names), names
            page.screenshot(path=str(tmp_path / "picker.png"), full_page=True)
        page.close()
    finally:
        served.stop()
