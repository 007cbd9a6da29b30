"""The explorer page in a real browser: headless Chromium driven by selenium.

Skipped, with the reason, where selenium, Chromium or its driver is missing (``.ci/run`` installs
Debian's ``chromium`` and ``chromium-driver`` when apt-get is available). Each test opens one page
(a browser start is about a second)."""

import shutil

import pytest
from inspect_helpers import STORY, page_data, tiny_checkpoint, tiny_moons_run

from memory_mosaics import cli

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
By = pytest.importorskip("selenium.webdriver.common.by").By
Select = pytest.importorskip("selenium.webdriver.support.ui").Select

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium and its driver are not installed (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(driver, path):
    driver.get(path.resolve().as_uri())
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"  # the script ran to the end
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def shown_sources(driver):
    rows = driver.find_elements(By.CSS_SELECTOR, "#retrieval tr[data-src]")
    return [int(r.get_attribute("data-src")) for r in rows], [float(r.get_attribute("data-weight")) for r in rows]


def expected_sources(data, layer, head, t):
    mem = [m for m in data["layers"][layer]["memories"] if m["kind"] != "persistent"][0]
    k = mem["k"]
    pairs = [(s, w) for s, w in zip(mem["src"][head][t * k : t * k + k], mem["w"][head][t * k : t * k + k]) if s >= 0]
    return [s for s, _ in pairs], [w for _, w in pairs]


def test_language_page_shows_what_a_token_retrieved(browser, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    page = tmp_path / "page.html"
    first = ["--token", "20", "--layer", "1", "--head", "1"]  # the view the page opens with
    argv = ["inspect", "--checkpoint", str(ckpt), "--text", STORY, "--out", str(page), "--top-k", "5", *first]
    assert cli.main(argv) == 0
    data = page_data(page.read_text(encoding="utf-8"))
    open_page(browser, page)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#text .tok")) == len(data["tokens"])
    assert shown_sources(browser) == expected_sources(data, 1, 1, 20)
    slots = browser.find_elements(By.CSS_SELECTOR, "#pmem tr[data-slot]")
    pmem = data["layers"][1]["memories"][1]
    assert [int(r.get_attribute("data-slot")) for r in slots] == pmem["src"][1][20 * 5 : 20 * 5 + 5]
    t = len(data["tokens"]) - 3
    browser.find_element(By.ID, f"tok-{t}").click()
    Select(browser.find_element(By.ID, "layer")).select_by_value("0")
    Select(browser.find_element(By.ID, "head")).select_by_value("0")
    assert shown_sources(browser) == expected_sources(data, 0, 0, t)
    arcs = browser.find_elements(By.CSS_SELECTOR, "#arcs path.arc")
    assert {int(a.get_attribute("data-src")) for a in arcs} <= set(expected_sources(data, 0, 0, t)[0])
    assert len(arcs) >= 1 and "query" in browser.find_element(By.ID, f"tok-{t}").get_attribute("class")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lens tbody tr")) == len(data["layers"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heads tbody tr")) == 2 * 2  # layers x heads
    assert len(browser.find_elements(By.CSS_SELECTOR, "#heads tr.sel")) == 1
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"


def test_v2_page_shows_per_token_parameters_and_no_slots(browser, tmp_path):
    v2 = dict(key_extractor="gated", bandwidth="adaptive", short_term_window=4, long_term_skip_min=3)
    ckpt = tiny_checkpoint(tmp_path / "ckpt", persistent="swiglu", **v2)
    page = tmp_path / "page.html"
    assert cli.main(["inspect", "--checkpoint", str(ckpt), "--text", STORY, "--out", str(page)]) == 0
    data = page_data(page.read_text(encoding="utf-8"))
    open_page(browser, page)
    memories = [o.text for o in Select(browser.find_element(By.ID, "memory")).options]
    assert memories == ["short", "long"]
    assert not browser.find_element(By.ID, "pmem").is_displayed()  # SwiGLU: no slots
    t = len(data["tokens"]) - 1
    gate = data["layers"][0]["memories"][0]["per_token"]["gate"][0][t]
    assert f"gate {gate:.3f}" in browser.find_element(By.CSS_SELECTOR, "#retrieval .per-token").text
    Select(browser.find_element(By.ID, "memory")).select_by_visible_text("long")
    long = data["layers"][0]["memories"][1]
    assert shown_sources(browser)[0] == [s for s in long["src"][0][t * 8 : t * 8 + 8] if s >= 0]
    assert all(t - s >= 3 for s in shown_sources(browser)[0])  # the long-term memory's lags >= m


def test_moons_page_draws_its_maps(browser, tmp_path):
    run = tiny_moons_run(tmp_path / "moons")
    page = tmp_path / "moons.html"
    assert cli.main(["inspect", "--moons", str(run), "--out", str(page)]) == 0
    open_page(browser, page)
    maps = browser.find_elements(By.CSS_SELECTOR, "canvas.retrieval-map")
    assert [(m.get_attribute("data-model"), m.get_attribute("data-head")) for m in maps] == [
        ("1head", "0"),
        ("3heads", "0"),
        ("3heads", "1"),
        ("3heads", "2"),
    ]
    webdriver.ActionChains(browser).move_to_element(maps[1]).perform()  # hover the middle row of a map
    assert "3heads, head 0, query t =" in browser.find_element(By.ID, "selected").text
