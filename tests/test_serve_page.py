"""The served page in real headless Chromium, at a phone's width (390 px, touch) and a desktop's (1280 px).

Upload, search, refine, the turn strip, "New search", checks before upload (type, size), readable errors
(the API's one line for a 4xx; "not reachable" when the server is gone) and the /healthz warning notice.
Every wait is a DOM condition (WebDriverWait), never a sleep. Screenshots are saved under the test's tmp dir,
and copied to $ZSCIR_SCREENSHOT_DIR when it is set (to look at them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve import UPLOAD_CAP, world  # noqa: F401 (world: the fixture of an indexed gallery)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} not installed (apt-get install chromium chromium-driver)"
    return None


pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))]

WIDTHS = {"phone": 390, "desktop": 1280}
NO_SIDEWAYS_SCROLL = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
IMAGES_IN_VIEW_LOADED = """return [...document.images].filter((i) => {
    const r = i.getBoundingClientRect();
    return i.offsetParent && r.bottom > 0 && r.top < innerHeight;
  }).every((i) => i.complete && i.naturalWidth > 0)"""
WARNING = "these are photos, but the served CLIP is the shapes world's: results will be poor"


@contextlib.contextmanager
def served(world, warning: str | None = None):
    """A server of the world's index (FTI + sum); with ``warning``, /healthz carries it (as for photos on the
    world's CLIP)."""
    from zscir.serve import create_app
    from zscir.serve.runner import serve_in_thread

    app = create_app(world["index"], [world["fti"], "sum"], max_upload_bytes=UPLOAD_CAP, max_k=12,
                     reload_interval=0)
    if warning:
        service = app.state.service
        health = service.health
        service.health = lambda: {**health(), "warnings": [warning]}
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def server(world):
    with served(world) as url, httpx.Client(base_url=url, timeout=600) as client:
        yield {"url": url, "client": client}


@pytest.fixture(scope="module")
def retriever(world):
    from zscir.resolve import load_retriever

    return load_retriever(world["index"], world["fti"])


def chromium(profile: Path, width: int, phone: bool):
    """A headless Chromium ``width`` px wide; ``phone``: Chrome's mobile emulation (touch, a phone's agent)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--hide-scrollbars"):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": 844, "pixelRatio": 2.0, "touch": True},
            "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/120.0 Mobile Safari/537.36"})
    else:
        options.add_argument(f"--window-size={width},1000")
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(params=list(WIDTHS))
def page(request, tmp_path):
    """The page's browser at one of WIDTHS; "phone" taps with a finger."""
    driver = chromium(tmp_path / "profile", WIDTHS[request.param], phone=request.param == "phone")
    try:
        yield Page(driver, request.param, tmp_path)
    finally:
        driver.quit()


class Page:
    """The driver, plus the few page actions the tests share: wait, tap or click, read, screenshot."""

    def __init__(self, driver, name: str, tmp_path: Path):
        self.driver, self.name, self.tmp_path = driver, name, tmp_path
        self.touch = name == "phone"

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def until(self, condition, what: str):
        """Wait for condition(page); on a timeout, say what was awaited and what the page showed."""
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, 30).until(lambda d: condition(self))
        except Exception as e:
            raise AssertionError(f"{self.name}: waited for {what}; status {self.text('#status')!r}; "
                                 f"logs {self.driver.get_log('browser')}") from e

    def press(self, css: str) -> None:
        """A tap with a finger at the phone's width (touch events, as a phone sends them); a click on desktop."""
        el = self.find(css)
        if not self.touch:
            el.click()
            return
        from selenium.webdriver.common.actions import interaction
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.pointer_input import PointerInput

        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
        actions = ActionBuilder(self.driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
        actions.pointer_action.move_to(el).pointer_down().pointer_up()
        actions.perform()

    def type(self, text: str) -> None:
        box = self.find("#text")
        box.clear()
        box.send_keys(text)

    def select_k(self, k: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find("#k")).select_by_visible_text(k)

    def choose_file(self, path: Path) -> None:
        self.find("#file").send_keys(str(path))

    def grid_ids(self) -> list[str]:
        return [c.get_attribute("data-id") for c in self.all("#grid figure.result")]

    def assert_fits(self) -> None:
        """No sideways scroll (measured in the page), and the text box inside its card."""
        scroll, client = self.driver.execute_script(NO_SIDEWAYS_SCROLL)
        assert scroll <= client, f"{self.name}: the page scrolls sideways ({scroll} > {client} px)"
        box, card = self.find("#text").rect, self.find("section.query").rect
        assert card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"], (box, card)
        for css in ("#go", "#reset"):
            b = self.find(css).rect
            assert b["x"] + b["width"] <= client, (css, b, client)

    def settle(self) -> None:
        """Wait until every image in view has loaded (lazy ones below the fold are not awaited)."""
        self.until(lambda p: p.driver.execute_script(IMAGES_IN_VIEW_LOADED), "every image in view loaded")

    def assert_fits_at(self, width: int) -> None:
        """assert_fits with the phone's screen set to ``width`` px for a moment (Chrome's device metrics)."""
        def metrics(w):
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": w, "height": 844, "deviceScaleFactor": 2, "mobile": True})
            self.until(lambda p: p.driver.execute_script("return innerWidth") == w, f"the page at {w} px")

        metrics(width)
        try:
            self.assert_fits()
        finally:
            metrics(WIDTHS[self.name])

    def screenshot(self, what: str, settle: bool = True) -> Path:
        if settle:
            self.settle()
        shot = self.tmp_path / f"serve_page_{self.name}_{what}.png"
        self.driver.save_screenshot(str(shot))
        if os.environ.get("ZSCIR_SCREENSHOT_DIR"):  # to look at it
            shutil.copy(shot, Path(os.environ["ZSCIR_SCREENSHOT_DIR"]) / shot.name)
        return shot


def test_page_searches_refines_shows_turns_and_starts_over(world, retriever, page):
    """Upload, search, refine, go back to turn 1 in the strip (its grid, reference and text), New search."""
    with served(world) as url:
        page.driver.get(url + "/")
        page.until(lambda p: len(p.all("#picker img")) == 18, "the gallery picker")
        assert "18 images" in page.text("#info")
        assert page.find("#notice").get_attribute("hidden") is not None  # no warning from this server
        page.assert_fits()

        # turn 1: upload a reference, type the change, tap / click Search
        page.choose_file(world["outside"])
        page.until(lambda p: p.find("#ref-preview").get_attribute("naturalWidth") not in (None, "0"), "the preview")
        page.type("make the square blue")
        page.press("#go")
        page.until(lambda p: p.text("#grid-title") == "Results of turn 1", "turn 1's results")
        first = [h.id for h in retriever.search(world["outside"], "make the square blue", k=10)]
        assert page.grid_ids() == first
        assert not page.find("#grid-hint").get_attribute("hidden")

        # turn 2: press a result, type the next change, Search
        choice = first[1]
        page.press(f'#grid figure.result[data-id="{choice}"]')
        assert "Refining from " + choice in page.text("#ref-label")
        page.type("add a yellow circle")
        page.select_k("5")
        page.press("#go")
        page.until(lambda p: p.text("#grid-title") == "Results of turn 2", "turn 2's results")
        second = [h.id for h in retriever.search(world["images"] / choice, "add a yellow circle", k=5)]
        assert page.grid_ids() == second
        assert [t.get_attribute("data-turn") for t in page.all("#turns li.turn")] == ["1", "2"]
        page.assert_fits()
        if page.touch:  # and on the narrowest phone the page is made for
            page.assert_fits_at(360)
        page.screenshot("turn2")

        # the strip: turn 1 shows turn 1's grid, reference (the upload) and text; then turn 2 its own again
        page.press('#turns li.turn[data-turn="1"]')
        page.until(lambda p: p.text("#grid-title") == "Results of turn 1", "turn 1 from the strip")
        assert page.grid_ids() == first
        assert "your upload" in page.text("#ref-label") and "make the square blue" in page.text("#ref-label")
        assert page.find("#ref-preview").get_attribute("src").startswith("blob:")
        assert page.find("#text").get_attribute("value") == "make the square blue"
        assert page.find("#k").get_attribute("value") == "10"
        assert "current" in page.find('#turns li.turn[data-turn="1"]').get_attribute("class")
        page.press('#turns li.turn[data-turn="2"]')
        page.until(lambda p: p.text("#grid-title") == "Results of turn 2", "turn 2 from the strip")
        assert page.grid_ids() == second
        assert "gallery image " + choice in page.text("#ref-label") and "add a yellow circle" in page.text("#ref-label")
        assert f"images/{choice}" in page.find("#ref-preview").get_attribute("src")
        assert page.find("#text").get_attribute("value") == "add a yellow circle"
        assert page.find("#k").get_attribute("value") == "5"

        # refining from a result of an earlier turn, shown from the strip: a third turn from that result
        page.press('#turns li.turn[data-turn="1"]')
        page.until(lambda p: p.text("#grid-title") == "Results of turn 1", "turn 1 from the strip")
        page.press(f'#grid figure.result[data-id="{first[2]}"]')
        page.type("make it red")
        page.press("#go")
        page.until(lambda p: p.text("#grid-title") == "Results of turn 3", "turn 3's results")
        assert page.grid_ids() == [h.id for h in retriever.search(world["images"] / first[2], "make it red", k=10)]
        page.screenshot("turn3")

        # New search: no old results, heading, hint, turns, status, reference or text
        page.press("#reset")
        page.until(lambda p: not p.all("#grid figure.result"), "the grid cleared")
        assert page.text("#grid-title") == "Results"
        assert page.find("#grid-hint").get_attribute("hidden") is not None
        assert page.find("#turns-box").get_attribute("hidden") is not None
        assert page.text("#status") == "" and page.text("#timings") == ""
        assert page.find("#ref-preview").get_attribute("hidden") is not None
        assert page.find("#text").get_attribute("value") == ""
        page.press("#go")  # nothing to search from: said so, nothing sent
        page.until(lambda p: "choose a reference image first" in p.text("#status"), "the no-reference message")
        page.assert_fits()
        page.screenshot("new_search")


def test_page_checks_files_and_shows_readable_errors(world, retriever, page, tmp_path):
    """A non-image or an over-cap file is refused at once; a 4xx shows the API's line; a stopped server reads
    "not reachable"; a /healthz warning is shown as a notice."""
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not a picture")
    fake_png = tmp_path / "broken.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    big = tmp_path / "big.png"  # noise does not compress: over the 64 KB upload cap
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > UPLOAD_CAP

    with served(world, warning=WARNING) as url:
        page.driver.get(url + "/")
        page.until(lambda p: len(p.all("#picker img")) == 18, "the gallery picker")
        page.until(lambda p: WARNING in p.text("#notice"), "the /healthz warning")
        assert page.find("#notice").is_displayed()
        page.assert_fits()

        # refused before any upload: a text file, a file named .png that is no image, a file over the cap
        for path, says in ((not_image, "notes.txt is not an image"), (fake_png, "broken.png is not a readable image"),
                           (big, f"over the server's limit of {UPLOAD_CAP // 1024} KB")):
            page.choose_file(path)
            page.until(lambda p: says in p.text("#status"), f"the message for {path.name}")
            assert "error" in page.find("#status").get_attribute("class")
            assert page.find("#ref-preview").get_attribute("hidden") is not None  # no broken icon
            assert page.find("#file").get_attribute("value") == ""  # the same file can be chosen again
        page.screenshot("refused_file")
        page.press("#go")
        page.until(lambda p: "choose a reference image first" in p.text("#status"), "nothing sent")

        # a 4xx: the API's one line (refining from a result with no text)
        page.press('#picker img[data-id="g05.png"]')
        page.type("make it green")
        page.press("#go")
        page.until(lambda p: p.text("#grid-title") == "Results of turn 1", "turn 1's results")
        page.press("#grid figure.result")
        page.press("#go")
        page.until(lambda p: "'text' is empty" in p.text("#status"), "the API's error line")
        assert "error" in page.find("#status").get_attribute("class")
        page.settle()  # the chosen result's preview, before the server goes

    # the server is gone: searching says so in words
    page.type("make it blue")
    page.press("#go")
    page.until(lambda p: "server is not reachable" in p.text("#status"), "the not-reachable message")
    assert "Failed to fetch" not in page.text("#status")
    page.assert_fits()
    page.screenshot("server_gone", settle=False)


def test_page_drop_picker_and_api_key(world, server, tmp_path):
    """Upload, search, refine, an API error, the gallery picker, a dropped file, and the page behind an API key;
    the screenshot shows the drawn thumbnails in the grid. (Moved from test_serve.py.)"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from zscir.resolve import load_retriever

    driver = chromium(tmp_path / "profile", 1100, phone=False)
    r = load_retriever(world["index"], world["fti"])
    try:
        class wait:  # WebDriverWait, saying what the page showed when it times out
            @staticmethod
            def until(condition):
                try:
                    return WebDriverWait(driver, 30).until(condition)
                except Exception as e:
                    status = driver.find_element(By.ID, "status").text
                    raise AssertionError(f"page status: {status!r}; logs: {driver.get_log('browser')}") from e

        driver.get(server["url"] + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#picker img")) == 18)
        assert "18 images" in driver.find_element(By.ID, "info").text

        # turn 1: upload a reference (the file picker), type the change, search
        driver.find_element(By.ID, "file").send_keys(str(world["outside"]))
        wait.until(lambda d: d.find_element(By.ID, "ref-preview").get_attribute("naturalWidth") not in (None, "0"))
        driver.find_element(By.ID, "text").send_keys("make the square blue")
        Select(driver.find_element(By.ID, "k")).select_by_visible_text("5")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.ID, "grid-title").text == "Results of turn 1")
        cells = driver.find_elements(By.CSS_SELECTOR, "#grid figure.result")
        expected = r.search(world["outside"], "make the square blue", k=5)
        assert [c.get_attribute("data-id") for c in cells] == [h.id for h in expected]
        assert cells[0].find_element(By.CLASS_NAME, "score").text == f"{expected[0].score:.3f}"

        # turn 2: click the second result, type the next change, press Enter
        choice = cells[1].get_attribute("data-id")
        cells[1].click()
        assert "Refining from " + choice in driver.find_element(By.ID, "ref-label").text
        assert "chosen" in cells[1].get_attribute("class")
        driver.find_element(By.ID, "text").send_keys("add a yellow circle" + Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "grid-title").text == "Results of turn 2")
        cells = driver.find_elements(By.CSS_SELECTOR, "#grid figure.result")
        expected = r.search(world["images"] / choice, "add a yellow circle", k=5)
        assert [c.get_attribute("data-id") for c in cells] == [h.id for h in expected]
        turns = driver.find_elements(By.CSS_SELECTOR, "#turns li.turn")
        assert [t.get_attribute("data-turn") for t in turns] == ["1", "2"]
        assert "add a yellow circle" in turns[1].text and "make the square blue" in turns[0].text
        assert "total" in driver.find_element(By.ID, "timings").text

        # an error from the API is shown on the page, naming the field
        driver.find_element(By.CSS_SELECTOR, "#grid figure.result").click()
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "'text' is empty" in d.find_element(By.ID, "status").text)
        assert "error" in driver.find_element(By.ID, "status").get_attribute("class")
        driver.find_element(By.ID, "text").send_keys("make it red" + Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "grid-title").text == "Results of turn 3")

        wait.until(lambda d: d.execute_script(
            "return [...document.images].filter(i => i.offsetParent).every(i => i.complete && i.naturalWidth > 0)"))
        shot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(shot))
        grid = driver.find_element(By.ID, "grid").rect

        # picking a gallery image starts a new search from it (left out of its own results)
        driver.find_element(By.CSS_SELECTOR, '#picker img[data-id="g09.png"]').click()
        assert not driver.find_elements(By.CSS_SELECTOR, "#turns li.turn")
        driver.find_element(By.ID, "text").clear()
        driver.find_element(By.ID, "text").send_keys("make it green" + Keys.ENTER)
        wait.until(lambda d: "\u201cmake it green\u201d" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "grid-title").text == "Results of turn 1"
        ids = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "#grid figure.result")]
        assert ids == [h.id for h in r.search(world["images"] / "g09.png", "make it green", k=5)]

        # dropping a file on the drop zone (a JPEG thumbnail the page fetched) searches from that file
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch("images/g12.png?size=512").then((r) => r.blob()).then((blob) => {
              const dt = new DataTransfer();
              dt.items.add(new File([blob], "dropped.jpg", {type: "image/jpeg"}));
              document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
              done();
            });""")
        wait.until(lambda d: "dropped.jpg" in d.find_element(By.ID, "ref-label").text)  # once it decoded
        assert driver.find_element(By.ID, "text").get_attribute("value") == "make it green"  # the text is kept
        driver.find_element(By.ID, "text").clear()
        driver.find_element(By.ID, "text").send_keys("make it yellow" + Keys.ENTER)
        wait.until(lambda d: "\u201cmake it yellow\u201d" in d.find_element(By.ID, "status").text)
        ids = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "#grid figure.result")]
        from zscir.data.images import decode_image

        dropped = decode_image(server["client"].get("/images/g12.png", params={"size": 512}).content)
        assert ids == [h.id for h in r.search(dropped, "make it yellow", k=5)]
        if os.environ.get("ZSCIR_SCREENSHOT_DIR"):  # to look at it
            shutil.copy(shot, Path(os.environ["ZSCIR_SCREENSHOT_DIR"]) / shot.name)

        # behind an API key: the browser sends the key it was given (here in the URL) with every request
        from zscir.serve import create_app
        from zscir.serve.runner import serve_in_thread

        with serve_in_thread(create_app(retrievers={"fti": r}, api_key="k3y", reload_interval=0)) as locked:
            driver.get(locked.replace("http://", "http://me:k3y@") + "/")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#picker img")) == 18)
            driver.find_element(By.CSS_SELECTOR, '#picker img[data-id="g03.png"]').click()
            driver.find_element(By.ID, "text").send_keys("make it green" + Keys.ENTER)
            wait.until(lambda d: "\u201cmake it green\u201d" in d.find_element(By.ID, "status").text)
            ids = [c.get_attribute("data-id") for c in driver.find_elements(By.CSS_SELECTOR, "#grid figure.result")]
            assert ids == [h.id for h in r.search(world["images"] / "g03.png", "make it green", k=10)]
            assert httpx.get(locked + "/healthz").status_code == 401
    finally:
        driver.quit()
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    scale = px.shape[1] / 1100
    box = px[int(grid["y"] * scale):int((grid["y"] + grid["height"]) * scale),
             int(grid["x"] * scale):int((grid["x"] + grid["width"]) * scale)]
    saturated = (box.max(axis=-1) - box.min(axis=-1)) > 120  # the drawn shapes' colours, not the grey page
    assert saturated.sum() > 5 * 140 * 140 * 0.3, saturated.sum()  # five thumbnails drawn in the grid
