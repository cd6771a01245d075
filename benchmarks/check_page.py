"""The page at `/` of `llmclf serve`, checked in headless Chromium: it lists the models,
classifies two pasted lines, and draws a bar per class; a screenshot is saved.

Not part of `make test` (it needs a Chromium: Debian's `apt-get install chromium`, and
`pip install playwright`, which drives it without downloading a browser of its own).

Usage: python benchmarks/check_page.py RUN [--chromium /usr/bin/chromium]
           [--screenshot benchmarks/results/serve_page.png]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

from common import RESULTS

TEXTS = [
    "Shares fell sharply after the bank missed its profit forecast.",
    "The striker scored twice.",
]
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshot", default=str(RESULTS / "serve_page.png"))
    args = parser.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from llmclf.serve import create_app

    app = create_app([args.run])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    name = next(iter(app.state.runs))
    classes = app.state.runs[name].classes
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert page.locator("#model option").all_inner_texts() == [name]
            page.fill("#texts", "\n".join(TEXTS))
            page.click("#go")
            page.wait_for_selector(".result")
            cards = page.locator(".result")
            assert cards.count() == len(TEXTS)
            bars = page.locator(".result").first.locator(".bar")
            assert bars.count() == len(classes)
            labels = page.locator(".result .label").all_inner_texts()
            assert all(label in classes for label in labels), labels
            assert page.locator("#error").inner_text() == ""
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.screenshot, full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    print(f"page ok: {len(TEXTS)} texts -> {labels}; screenshot {args.screenshot}")


if __name__ == "__main__":
    main()
