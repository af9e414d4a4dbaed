"""Screenshots of the ``textvae serve`` page for the README.

Serves RUN on 127.0.0.1 in this process, drives the page in headless
Chromium (Debian's ``chromium`` and ``chromedriver``; nothing downloaded):
types a sentence, moves a slider, interpolates, clicks the map, samples,
completes and does arithmetic, then saves three PNGs (256 colours) to OUT:
serve-explore.png (sentence and map), serve-tools.png (interpolation,
samples, completion, arithmetic) and serve-diagnostics.png.

    python scripts/serve_screenshots.py runs/quickstart --out docs
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,2300", "--hide-scrollbars")


def fill(driver, element_id: str, text: str) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)


def wait(driver, condition, seconds: float = 120) -> None:
    WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: condition(d))


def drive(driver, url: str, args: argparse.Namespace) -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_element(By.ID, "reconstruction").text)
    wait(driver, lambda d: "sentences from" in d.find_element(By.ID, "map-status").text)
    fill(driver, "sentence-input", args.sentence)
    driver.find_element(By.ID, "encode-btn").click()
    wait(driver, lambda d: d.find_element(By.ID, "encode-btn").is_enabled()
         and d.find_element(By.ID, "neighbours").text)
    slider = driver.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")[1]
    driver.execute_script("arguments[0].value = 1.5; arguments[0].dispatchEvent(new Event('input'));", slider)
    fill(driver, "interp-a", args.start)
    fill(driver, "interp-b", args.end)
    fill(driver, "interp-steps", "6")
    driver.find_element(By.ID, "interp-btn").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#interp-list li")) == 6)
    canvas = driver.find_element(By.ID, "map-canvas")
    ActionChains(driver).move_to_element_with_offset(canvas, 90, -70).click().perform()
    wait(driver, lambda d: d.find_element(By.ID, "map-decoded").text)
    for button, result in (("sample-btn", "#sample-list li"), ("complete-btn", "#complete-list li")):
        driver.find_element(By.ID, button).click()
        wait(driver, lambda d, r=result: d.find_elements(By.CSS_SELECTOR, r))
    for element_id, text in (("arith-a", "the boy ran to school"), ("arith-b", "the boy"), ("arith-c", "the girl"),
                             ("attr-sentence", "the house was old")):
        fill(driver, element_id, text)
    fill(driver, "attr-positive", "a hot summer day\nthe weather was hot")
    fill(driver, "attr-negative", "a cold winter night\nthe weather was cold")
    driver.find_element(By.ID, "arith-btn").click()
    wait(driver, lambda d: d.find_element(By.ID, "arith-result").text)
    driver.find_element(By.ID, "attr-btn").click()
    wait(driver, lambda d: d.find_element(By.ID, "attr-result").text)
    # Hover last, so the tooltip shows in the first picture.
    x, y, w, h = driver.execute_script(
        "const f = mapFrame(); const p = f.toScreen(state.map.points[3]); return [p[0], p[1], f.w, f.h];")
    ActionChains(driver).move_to_element_with_offset(canvas, int(x - w / 2), int(y - h / 2)).perform()
    time.sleep(0.5)


def save(driver, png: bytes, ids: list[str], path: Path) -> None:
    """Crop the page screenshot to the box around the elements ``ids``; 256 colours."""
    from PIL import Image

    boxes = [driver.execute_script("const r = document.getElementById(arguments[0]).getBoundingClientRect();"
                                   "return [r.left, r.top, r.right, r.bottom];", i) for i in ids]
    ratio = driver.execute_script("return window.devicePixelRatio") or 1
    left, top = min(b[0] for b in boxes) - 8, min(b[1] for b in boxes) - 8
    right, bottom = max(b[2] for b in boxes) + 8, max(b[3] for b in boxes) + 8
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop(tuple(int(v * ratio) for v in (max(0, left), max(0, top), right, bottom)))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--sentence", default="he ran a mile in the rain")
    parser.add_argument("--start", default="he ran a mile")
    parser.add_argument("--end", default="she sang a beautiful song")
    args = parser.parse_args()
    from serve_support import running_server

    from textvae.model import TextVAE
    from textvae.serve import Explorer
    from textvae.serve.app import create_app

    explorer = Explorer(TextVAE.from_pretrained(args.run), args.run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile, running_server(create_app(explorer)) as url:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
        try:
            drive(driver, url + "/", args)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1280, height + 140)  # the whole page in one screenshot
            time.sleep(0.5)
            png = driver.get_screenshot_as_png()
            save(driver, png, ["page-header", "sentence-card", "map-card"], out / "serve-explore.png")
            save(driver, png, ["interpolate-card", "sample-card", "complete-card", "arithmetic-card"],
                 out / "serve-tools.png")
            save(driver, png, ["diagnostics-card"], out / "serve-diagnostics.png")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
