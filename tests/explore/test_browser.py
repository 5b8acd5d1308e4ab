"""End to end in a real headless chromium (selenium): the served page and the static page from ``file://``.

One browser for the module; its proxy points nowhere, so only loopback and ``file://`` can load.
Skipped only when selenium, chromium or chromedriver is not installed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tnderiv
from tnderiv.explore import explore
from tnderiv.render.spec import parse_spec

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if not Path(CHROMEDRIVER).exists() or CHROMIUM is None:
    pytest.skip("the browser tests need chromium and chromedriver (apt-get install chromium chromium-driver)", allow_module_level=True)

WAIT = 30  # seconds; re-planning on a loaded 2-core machine


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1100",
                "--proxy-server=http://127.0.0.1:9", "--disable-background-networking", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served() -> Iterator[tnderiv.explore.__class__]:
    explorer = explore("conv2d", "vjp_weight", {"x": (2, 2, 7, 6)})
    yield explorer
    explorer.stop()


def ready(driver: webdriver.Chrome) -> None:
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.body.dataset.ready") == "true")


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def highlighted(driver: webdriver.Chrome) -> list[int]:
    return sorted(int(g.get_attribute("data-node")) for g in driver.find_elements(By.CSS_SELECTOR, "#diagram g.hl[data-node]"))


def replanned(driver: webdriver.Chrome, before: str):
    return lambda d: text(d, "status").startswith("re-planned") and text(d, "expression") != before


def test_page_shows_diagram_and_candidates(browser, served) -> None:
    browser.get(served.url)
    ready(browser)
    report = served.report()
    nodes = browser.find_elements(By.CSS_SELECTOR, "#diagram svg g[data-node]")
    assert len(nodes) == len(report["diagram"]["nodes"])
    rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
    assert [r.get_attribute("data-candidate") for r in rows] == [c["id"] for c in report["candidates"]]
    assert "tnderiv" in rows[0].text  # tnderiv's own choice comes first, marked
    ActionChains(browser).move_to_element(nodes[0]).perform()
    WebDriverWait(browser, WAIT).until(lambda d: "elements" in text(d, "hover"))
    assert "x[n, g, c_in, i0, i1]" in text(browser, "hover") and "operand" in text(browser, "hover")


def test_selecting_a_step_highlights_its_nodes(browser, served) -> None:
    report = served.report()
    row = next(c for c in report["candidates"] if len(c["steps"]) >= 3)
    browser.find_element(By.CSS_SELECTOR, f"#candidates tr[data-candidate='{row['id']}']").click()
    for j in (0, 1):
        browser.find_element(By.CSS_SELECTOR, f"#steps tr[data-step='{j}']").click()
        assert highlighted(browser) == row["steps"][j]["nodes"]
        assert f"step {j + 1} ({row['steps'][j]['kernel']})" in text(browser, "intermediate")
    browser.execute_script("const s = document.getElementById('step-slider'); s.value = '1';"
                           "s.dispatchEvent(new Event('input'));")  # fmt: skip
    assert highlighted(browser) == row["steps"][0]["nodes"]
    assert browser.find_element(By.CSS_SELECTOR, "#plot rect.bar.selected").get_attribute("data-step") == "0"


def test_changing_a_hyperparameter_replans(browser, served) -> None:
    before = text(browser, "expression")
    stride = browser.find_element(By.ID, "param-stride")
    stride.clear()
    stride.send_keys("2")
    WebDriverWait(browser, WAIT).until(replanned(browser, before))
    assert "S=2" in text(browser, "expression")
    assert text(browser, "spec-text") == "conv2d:stride=2"
    assert browser.find_element(By.ID, "error").is_displayed() is False


def test_an_invalid_setting_shows_the_library_error(browser, served) -> None:
    before = text(browser, "expression")
    channels = browser.find_element(By.ID, "param-in")
    channels.clear()
    channels.send_keys("3")
    groups = browser.find_element(By.ID, "param-groups")
    groups.clear()
    groups.send_keys("2")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "in_channels=3 is not divisible by groups=2" in text(browser, "error")
    assert "Traceback" not in text(browser, "error")
    assert text(browser, "expression") == before  # nothing half-updated: the last valid report stays
    groups.clear()
    groups.send_keys("1")
    WebDriverWait(browser, WAIT).until(lambda d: not d.find_element(By.ID, "error").is_displayed())


def test_simplify_off_shows_the_raw_diagram_and_on_the_strip(browser, served) -> None:
    nodes = len(browser.find_elements(By.CSS_SELECTOR, "#diagram svg g[data-node]"))
    assert browser.find_elements(By.CSS_SELECTOR, "#strip svg")  # simplify on: the derivation strip
    before = text(browser, "expression")
    browser.find_element(By.ID, "simplify").click()
    WebDriverWait(browser, WAIT).until(replanned(browser, before))
    assert not browser.find_elements(By.CSS_SELECTOR, "#strip svg") and "simplify is off" in text(browser, "strip-title")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#diagram svg g[data-node]")) > nodes  # the δ's the rules remove
    before = text(browser, "expression")
    browser.find_element(By.ID, "simplify").click()
    WebDriverWait(browser, WAIT).until(replanned(browser, before))
    assert "rewrites" in text(browser, "strip-title")


def test_exported_path_is_accepted_and_matches_torch(browser, served) -> None:
    rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
    rows[-1].click()
    exported = json.loads(browser.find_element(By.ID, "export-json").get_attribute("textContent"))
    assert isinstance(exported["optimize"], list) and exported["spec"] == text(browser, "spec-text")
    layer, _ = parse_spec(exported["spec"])
    plan = tnderiv.plan(layer, exported["shapes"], quantity=exported["quantity"], optimize=exported["optimize"], dtype=torch.float64)
    x = torch.randn(exported["shapes"]["x"], dtype=torch.float64)
    g = torch.randn(exported["shapes"]["grad_out"], dtype=torch.float64)
    w = torch.zeros(layer.out_channels, layer.in_channels // layer.groups, 3, 3, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, stride=layer.stride, groups=layer.groups)
    (expected,) = torch.autograd.grad(y, w, g)
    torch.testing.assert_close(plan(x=x, grad_out=g).reshape(expected.shape), expected)


def test_measure_button_shows_a_time(browser, served) -> None:
    browser.find_element(By.CSS_SELECTOR, "#candidates tbody tr button.measure").click()
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#candidates .measured"))
    assert browser.find_element(By.CSS_SELECTOR, "#candidates .measured").text.endswith("s")


def test_static_page_works_from_file_without_network(browser, tmp_path: Path) -> None:
    page = explore("conv1d:stride=2", "per_sample_grad", serve=False).save(tmp_path / "explorer.html")
    browser.get(page.resolve().as_uri())
    ready(browser)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched
    assert browser.find_elements(By.CSS_SELECTOR, "#diagram svg g[data-node]")
    rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
    assert len(rows) >= 2
    rows[1].click()
    browser.find_element(By.CSS_SELECTOR, "#steps tr[data-step='0']").click()
    assert highlighted(browser)
    assert browser.find_element(By.ID, "static-note").is_displayed()
    assert browser.find_element(By.ID, "controls").get_attribute("disabled") is not None
    assert not browser.find_elements(By.CSS_SELECTOR, "button.measure")
    assert "optimize" in browser.find_element(By.ID, "export-json").get_attribute("textContent")
