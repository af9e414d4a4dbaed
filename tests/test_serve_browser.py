"""The explorer page in headless Chromium (Debian's ``chromium`` and
``chromedriver``, driven by Selenium; no browser is downloaded): it types a
sentence, moves a slider, runs an interpolation, hovers over and clicks the
map, draws samples, and checks what the page shows against the model.
Screenshots go to the test's temporary folder, and also to
``$TEXTVAE_SCREENSHOTS`` when that is set. Skips where Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_support import make_explorer, running_server  # noqa: E402

from textvae import operations  # noqa: E402
from textvae.serve.app import create_app  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,2200")


def find_chromium() -> tuple[str, str]:
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium or chromedriver here (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def wait_for(driver, condition, seconds: float = 30):
    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition(d))


def screenshot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"serve-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("TEXTVAE_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["TEXTVAE_SCREENSHOTS"]) / path.name)


def test_the_page_in_chromium(browser, trained_run, tmp_path):
    explorer = make_explorer(trained_run)
    model = explorer.model
    with running_server(create_app(explorer)) as url:
        browser.get(url + "/")
        # The page encodes its example sentence at start, then shows the map.
        wait_for(browser, lambda d: text_of(d, "reconstruction"))
        wait_for(browser, lambda d: "sentences from" in text_of(d, "map-status"))

        # Type a sentence: its reconstruction, sliders, neighbours.
        sentence = "the dog sat on the rug"
        box = browser.find_element(By.ID, "sentence-input")
        box.clear()
        box.send_keys(sentence)
        browser.find_element(By.ID, "encode-btn").click()
        expected = model.reconstruct([sentence])[0]
        wait_for(browser, lambda d: text_of(d, "reconstruction") == expected
                 and d.find_element(By.ID, "encode-btn").is_enabled()
                 and text_of(d, "neighbours").startswith(sentence))
        sliders = browser.find_elements(By.CSS_SELECTOR, "#sliders input[type=range]")
        assert len(sliders) == model.latent_dim

        # Move a slider: the page decodes the new z live.
        browser.execute_script("const s = arguments[0]; s.value = 2.5; s.dispatchEvent(new Event('input'));",
                               sliders[0])
        z = torch.tensor([browser.execute_script("return state.z;")])
        assert float(z[0, 0]) == pytest.approx(2.5)
        moved = operations.decode(model, z)[0]
        wait_for(browser, lambda d: text_of(d, "slider-decoding") == moved)

        # Interpolation.
        steps = browser.find_element(By.ID, "interp-steps")
        steps.clear()
        steps.send_keys("5")
        browser.find_element(By.ID, "interp-btn").click()
        a, b = (browser.find_element(By.ID, i).get_attribute("value") for i in ("interp-a", "interp-b"))
        path = [s or "(the empty sentence)" for s in model.interpolate(a, b, 5, method="slerp")]
        wait_for(browser, lambda d: [li.text for li in d.find_elements(By.CSS_SELECTOR, "#interp-list li")] == path)
        wait_for(browser, lambda d: len(d.execute_script("return state.overlay.path;")) == 5)

        # Hover over a training point: its sentence shows; click the map: that point is decoded.
        canvas = browser.find_element(By.ID, "map-canvas")
        x, y, width, height = browser.execute_script(
            "const f = mapFrame(); const p = f.toScreen(state.map.points[0]); return [p[0], p[1], f.w, f.h];")
        ActionChains(browser).move_to_element_with_offset(canvas, int(x - width / 2), int(y - height / 2)).perform()
        wait_for(browser, lambda d: d.find_element(By.ID, "map-tooltip").is_displayed())
        assert text_of(browser, "map-tooltip") in explorer.map.sentences
        ActionChains(browser).move_to_element_with_offset(canvas, 40, -60).click().perform()
        wait_for(browser, lambda d: text_of(d, "map-decoded"))
        clicked = browser.execute_script("return state.overlay.clicked;")
        decoded = explorer.unproject([clicked], {"strategy": "greedy"})["sentences"][0]
        assert text_of(browser, "map-decoded") == decoded

        # Prior samples, a completion, arithmetic.
        browser.find_element(By.ID, "sample-btn").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sample-list li")) == 8)
        browser.find_element(By.ID, "complete-btn").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#complete-list li")) == 4)
        assert all(li.text.startswith("the man") for li in browser.find_elements(By.CSS_SELECTOR, "#complete-list li"))
        browser.find_element(By.ID, "arith-btn").click()
        browser.find_element(By.ID, "attr-btn").click()
        wait_for(browser, lambda d: text_of(d, "arith-result") and text_of(d, "attr-result"))

        # Diagnostics: a KL bar and an AU bar per dimension, the training curves, the figures.
        assert len(browser.find_elements(By.CSS_SELECTOR, "#kl-bars rect.bar")) == model.latent_dim
        assert len(browser.find_elements(By.CSS_SELECTOR, "#au-bars rect.bar")) == model.latent_dim
        assert len(browser.find_elements(By.CSS_SELECTOR, "#curves svg")) >= 3
        assert "active units" in text_of(browser, "figures")
        for error_id in ("sentence-error", "map-error", "interp-error", "sample-error", "complete-error",
                         "arith-error"):
            assert text_of(browser, error_id) == "", error_id
        screenshot(browser, tmp_path, "page")

        # A refusal shows in its panel, and the page goes on working.
        steps.clear()
        steps.send_keys("50")
        browser.find_element(By.ID, "interp-btn").click()
        wait_for(browser, lambda d: "between 2 and 9" in text_of(d, "interp-error"))
        assert not [entry for entry in browser.get_log("browser")
                    if entry["level"] == "SEVERE" and "/api/interpolate" not in entry["message"]]
