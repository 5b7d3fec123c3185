"""The documentation site, built as `make docs` builds it and opened in a real headless
Chromium (the distribution's `chromium` and `chromedriver`, which `make browser` installs):
the home page, the `QSGLD` API page and the sampling guide render with their code blocks and
images, the home page leads in one click to the install, sampling and cost pages, and the
site's search finds `Temperature`. A screenshot of the home page is kept in
`results/site/home.png` (ignored by git)."""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading

import pytest

from tests.programs import runner

# One build is enough: the site does not depend on the backend of the tests.
pytestmark = pytest.mark.backends("tensorflow")

ROOT = runner.ROOT
SCREENSHOT = ROOT / "results" / "site" / "home.png"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site, served over HTTP (the search runs in a web worker, which a file://
    page may not start)."""
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(folder),
        ],
        cwd=ROOT,
        env=runner.script_env(
            NO_MKDOCS_2_WARNING="1", TF_CPP_MIN_LOG_LEVEL="3"
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, (
        "the browser test needs Chromium and its driver: `make browser` (apt-get install "
        "chromium chromium-driver)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_until(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def images_loaded(driver):
    """`(src, loaded)` of every image in the page's content."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('article img'))"
        ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);"
    )


def code_blocks(driver):
    from selenium.webdriver.common.by import By

    return [
        e.text
        for e in driver.find_elements(By.CSS_SELECTOR, "article pre code")
    ]


def test_home_page_renders_and_leads_to_install_sampling_and_cost(
    site, browser
):
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/index.html")
    assert "keras-qsgld" in browser.title
    blocks = code_blocks(browser)
    assert any("Qp = eta * b ** floor" in b for b in blocks), blocks
    links = {
        a.get_attribute("href").rsplit("/", 1)[-1]
        for a in browser.find_elements(By.CSS_SELECTOR, "article a[href]")
    }
    # How to install for PyTorch, how to sample, what the update costs: one click each.
    assert {"install.html", "sampling.html", "benchmarks.html"} <= links, links
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.get(f"{site}/install.html")
    headings = [
        h.text for h in browser.find_elements(By.CSS_SELECTOR, "article h2")
    ]
    assert any("PyTorch" in h for h in headings), headings
    assert any(
        "download.pytorch.org/whl/cpu" in b for b in code_blocks(browser)
    )


def test_qsgld_api_page_renders_the_docstring(site, browser):
    browser.get(f"{site}/api/QSGLD.html")
    text = browser.find_element("css selector", "article").text
    assert "QSGLD" in text and "Raises" in text and "References" in text
    assert "{{base_optimizer_keyword_args}}" not in text
    assert "weight_decay" in text  # Keras' shared arguments, filled in
    blocks = code_blocks(browser)
    assert any("delta = Q(Qp * (h + r)) / Qp" in b for b in blocks), blocks
    assert any(">>> optimizer = keras_qsgld.QSGLD" in b for b in blocks), blocks


def test_sampling_guide_and_benchmarks_render_code_and_images(site, browser):
    browser.get(f"{site}/sampling.html")
    blocks = code_blocks(browser)
    assert len(blocks) >= 10
    assert any(
        "GaussianNegativeLogLikelihood(noise_std=sigma)" in b for b in blocks
    )
    browser.get(f"{site}/benchmarks.html")
    images = images_loaded(browser)
    assert len(images) >= 3 and all(ok for _, ok in images), images


def test_search_finds_temperature(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{site}/index.html")
    # Material opens its search on the "s" key, as a reader would.
    browser.find_element(By.TAG_NAME, "body").send_keys("s")

    def search_box(driver):
        box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")
        return box if box.is_displayed() else False

    box = wait_until(browser, search_box)
    box.send_keys("Temperature")
    box.send_keys(
        Keys.SHIFT
    )  # a key event after the query: the search reacts to typing

    def results(driver):
        items = driver.find_elements(
            By.CSS_SELECTOR, ".md-search-result__item a"
        )
        return [a.get_attribute("href") for a in items] or False

    hrefs = wait_until(browser, results)
    assert any("api/Temperature.html" in h for h in hrefs), hrefs


def test_every_public_name_has_an_api_page():
    import keras_qsgld

    pages = {p.stem for p in (ROOT / "docs" / "api").glob("*.md")}
    missing = [n for n in keras_qsgld.__all__ if n not in pages]
    assert not missing, missing
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"api/{n}.md" in nav for n in keras_qsgld.__all__)
    assert os.path.isfile(ROOT / "docs" / "api" / "index.md")
