"""memfail report as a reader opens it: the --quick page built once by the real command, its
numbers against the commands they come from, every counterexample replayed, and the page in
headless Chromium (Debian's chromium and chromium-driver, scripts/setup-system.sh) with the
network cut: every section, table and figure visible, no console error, no external request,
screenshots at 1280 px and 400 px in light and dark, and printed to PDF.

MEMFAIL_REPORT_SHOTS=DIR also writes one screenshot per section there (docs/report/*.png).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from memfail.cli import main
from memfail.report.html.page import SECTIONS
from test_report import real_search

pytestmark = pytest.mark.xdist_group("report")  # one page for the module (pyproject: loadgroup)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``memfail report --quick`` run once, as a user runs it, in a fresh directory, given a
    real ``memfail search --json`` output (a small search: about two seconds)."""
    where = tmp_path_factory.mktemp("report")
    search = real_search(where)
    assert search.name == "search.json"
    old = Path.cwd()
    os.chdir(where)
    try:
        rc = main(["report", "--quick", "--out", "r.html", "--search-json", "search.json"])
    finally:
        os.chdir(old)
    assert rc == 0
    html = (where / "r.html").read_text("utf-8")
    m = re.search(r'<script type="application/json" id="memfail-data">(.*?)</script>', html,
                  flags=re.S)
    assert m is not None
    data = json.loads(m.group(1).replace("<\\/", "</"))
    return {"dir": where, "path": where / "r.html", "html": html, "data": data,
            "search": json.loads(search.read_text())}


def _json(args: list[str]) -> Any:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(args)
    assert rc in (0, 1), args
    return json.loads(buf.getvalue())


# ----------------------------------------------------------------------------- numbers


@pytest.fixture(scope="module")
def compare_json() -> dict[str, Any]:
    doc: dict[str, Any] = _json(["compare", "--json", "--no-readings"])
    return doc


def test_minimum_section_equals_memfail_policies(report: dict[str, Any]) -> None:
    want = _json(["policies", "--json"])["policies"]
    got = report["data"]["policies"]
    assert sorted(got) == sorted(want)
    base = want[report["data"]["baseline"]]["knobs"]
    for name, p in want.items():
        assert got[name]["knobs"] == p["knobs"] and got[name]["unmerged"] == p["unmerged"]
        row = re.search(rf'<span id="policy-{name}">.*?</tr>', report["html"], re.S)
        assert row is not None, name
        for k, v in p["knobs"].items():  # the knobs that differ from the baseline, shown
            shown = f"<code>{k}={_text(v)}</code>"
            assert (shown in row.group(0)) == (v != base[k]), (name, k)


def _text(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def test_every_risk_verdict_links_to_evidence_of_that_risk(
        report: dict[str, Any], compare_json: dict[str, Any]) -> None:
    """Each comparison cell a risk verdict links to shows, in `memfail compare --json`, one
    of the outcomes that risk is about; each counterexample it links to is of one of the
    risk's properties and is in the page."""
    from memfail.report.html.page import RISKS, anchor

    cells = {anchor("cell", c["scenario"], c["policy"]): c for c in compare_json["cells"]}
    html = report["html"]
    linked = 0
    for risk in RISKS:
        row = re.search(rf'<span id="{risk["id"]}">.*?</tr>', html, re.S)
        assert row is not None, risk["id"]
        for target in re.findall(r'href="#([^"]+)"', row.group(0)):
            linked += 1
            if target.startswith("cell-"):
                o = cells[target]["outcomes"]
                assert any(o.get(k) for k in risk["keys"]), (risk["id"], target)
            else:
                assert target.startswith("cex-") and f'id="{target}"' in html
                assert any(target.endswith("-" + p) for p in risk["props"]), target
    assert linked


def test_kernel_versions_equal_memfail_compare_under_each_profile(
        report: dict[str, Any]) -> None:
    """Every profile's column against the command the manifest gives for it (`memfail
    compare --profile P --no-readings --json` for the same policies); a scenario a profile
    lacks a feature for is n/a there, never an error that empties the column."""
    k = report["data"]["kernels"]
    commands = report["data"]["manifest"]["commands"]
    for prof, got in k["by_profile"].items():
        assert "error" not in got, got.get("error")
        assert got["command"] in commands
        want = _json(got["command"].split()[1:])
        assert got["verdicts"] == want["verdicts"], prof
    assert "cells change" not in report["html"]


def test_fidelity_equals_memfail_replay_and_the_oracle_cases(report: dict[str, Any]) -> None:
    d = report["data"]
    tree = Path(__file__).resolve().parent
    assert d["oracle"]["total"] == len(list((tree / "oracle").rglob("*.yaml")))
    assert f"reproduces <b>{d['oracle']['reproduced']} of {d['oracle']['total']}</b>" in \
        report["html"]
    old = Path.cwd()
    os.chdir(tree.parent)
    try:
        want = _json(d["replay"]["command"].split()[1:])
    finally:
        os.chdir(old)
    counts: dict[str, int] = {}
    for r in want["replay"]:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    assert d["replay"]["counts"] == counts
    assert ", ".join(f"{n} {v}" for v, n in counts.items()) in report["html"]


def test_comparison_equals_memfail_compare(report: dict[str, Any],
                                          compare_json: dict[str, Any]) -> None:
    got = report["data"]["compare"]
    want = compare_json
    assert got["verdicts"] == want["verdicts"]
    assert {(c["scenario"], c["policy"]): c["code"] for c in got["cells"]} == \
        {(c["scenario"], c["policy"]): c["code"] for c in want["cells"]}


def test_check_equals_memfail_check(report: dict[str, Any]) -> None:
    got = report["data"]["check"]
    depth = got["bounds"]["max_depth"]
    want = _json(["check", "--max-depth", str(depth), "--json"])
    assert [(r["policy"], r["states"], r["transitions"]) for r in got["results"]] == \
        [(r["policy"], r["states"], r["transitions"]) for r in want["results"]]
    for g, w in zip(got["results"], want["results"], strict=True):
        assert {k: v["status"] for k, v in g["verdicts"].items()} == \
            {k: v["status"] for k, v in w["verdicts"].items()}


def test_fleet_equals_memfail_fleet(report: dict[str, Any]) -> None:
    f = report["data"]["fleet"]
    cmd = f["command"].split()
    assert cmd[:2] == ["memfail", "fleet"]
    want = _json(cmd[1:])
    assert f["run"]["rates"] == want["rates"]
    assert f["run"]["p_any_fault"] == want["p_any_fault"]
    assert f["calibration"]["p_host_ue_per_year"] == want["p_any_fault"]
    assert f"{want['p_any_fault']:.2%}" in report["html"]


def _shlex(cmd: str) -> list[str]:
    import shlex

    return shlex.split(cmd)


def test_sensitivity_equals_memfail_fleet_and_fleet_sweep(report: dict[str, Any]) -> None:
    """The tornado's default and one parameter's two ends are the rates `memfail fleet` and
    the `memfail fleet sweep` the manifest lists print (same seed, host-years, policies)."""
    sens = report["data"]["fleet"]["sensitivity"]
    unit = sens["unit"]

    def rates(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
        return {p: {r["outcome"]: r[unit]["estimate"] for r in doc["rates"]
                    if r["policy"] == p and r["outcome"] in sens["outcomes"]}
                for p in sens["policies"]}

    assert sens["command"] in report["data"]["manifest"]["commands"]
    assert rates(_json(_shlex(sens["command"])[1:])) == sens["centre"]
    row = next(r for r in sens["rows"] if r["command"] and r["low"] != r["high"])
    assert row["command"] in report["data"]["manifest"]["commands"]
    sweep = _json(_shlex(row["command"])[1:])
    assert [rates(p) for p in sweep["points"]] == [row["low"], row["high"]]


def test_every_counterexample_replays(report: dict[str, Any]) -> None:
    from memfail.report.html.collect import ORACLE_COMMAND

    replays = [c for c in report["data"]["manifest"]["commands"]
               if c.startswith("memfail run ") and c != ORACLE_COMMAND]
    assert replays, "the quick check finds counterexamples under the call's proposal"
    old = Path.cwd()
    os.chdir(report["dir"])
    try:
        for cmd in replays:
            assert main([*cmd.split()[1:], "-q"]) == 0, cmd  # the violation reproduces
            assert f"<code class=\"cmd\">{cmd}</code>" in report["html"]
    finally:
        os.chdir(old)


def test_manifest_names_version_seed_and_input_hashes(report: dict[str, Any]) -> None:
    m = report["data"]["manifest"]
    assert m["seed"] == 0 and m["quick"] is True and m["memfail_version"]
    assert any(k.startswith("fleet/defaults.yaml") for k in m["inputs"])
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in m["inputs"].values())
    assert "search.json" in m["inputs"]
    assert m["command"] == "memfail report --quick --out r.html --search-json search.json"
    import hashlib

    import memfail
    from memfail.cli import _version

    assert m["memfail_version"] == _version()
    defaults = Path(memfail.__file__).parent / "fleet" / "defaults.yaml"
    assert m["inputs"]["fleet/defaults.yaml"] == hashlib.sha256(defaults.read_bytes()).hexdigest()
    assert m["inputs"]["search.json"] == hashlib.sha256(
        (report["dir"] / "search.json").read_bytes()).hexdigest()
    stages = {s["stage"]: s.get("process", "first") for s in m["stages"]}
    assert stages["compare: every vm-* scenario x every policy"] == "first"
    assert stages["check: standard configuration, depth 3"] == "second"  # --workers 2


def test_page_is_self_contained(report: dict[str, Any]) -> None:
    html = report["html"]
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html)
    assert not re.search(r"<script\b(?![^>]*type=\"application/json\")", html)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "@import" not in html and "url(" not in html


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists(), "chromium missing: run `make system`"
    assert Path(DRIVER).exists(), "chromedriver missing: run `make system` (chromium-driver)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--hide-scrollbars", "--window-size=1280,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        drv.execute_cdp_cmd("Network.enable", {})
        drv.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        yield drv
    finally:
        drv.quit()


def _open(drv: Any, path: Path, width: int, dark: bool) -> None:
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 600})
    drv.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
    drv.get(path.as_uri())


def _visible(drv: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return [el for el in drv.find_elements(By.CSS_SELECTOR, css)]


@pytest.mark.parametrize("width, dark", [(1280, False), (1280, True), (400, False),
                                         (400, True)])
def test_page_in_chromium(report: dict[str, Any], browser: Any, tmp_path: Path, width: int,
                          dark: bool) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, report["path"], width, dark)
    for sid, title in SECTIONS:
        sec = browser.find_element(By.ID, sid)
        assert sec.is_displayed(), sid
        h2 = sec.find_element(By.TAG_NAME, "h2")
        assert h2.is_displayed() and h2.text.startswith(title.split(" (")[0][:20])
        assert sec.size["height"] > 40 and sec.size["width"] > 0
    tables = _visible(browser, "section table")
    assert len(tables) >= 12
    hidden = [t for t in tables if not t.is_displayed()
              and not browser.execute_script("return !!arguments[0].closest('details')", t)]
    assert not hidden
    figs = _visible(browser, "svg.fig")
    assert figs and all(f.is_displayed() and f.size["width"] > 0 for f in figs)
    for cls in ("lanes", "folio", "legend"):
        assert _visible(browser, f"svg.{cls}"), cls
    # every verdict links to evidence that exists in the page
    for a in _visible(browser, "table.risk a"):
        target = a.get_attribute("href").split("#", 1)[1]
        assert browser.find_elements(By.ID, target), target
    # the page fits: no horizontal scroll of the body, only of its scroll boxes
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    calib = browser.find_element(By.CSS_SELECTOR, "#calibration + p.calib")
    p = report["data"]["fleet"]["calibration"]["p_host_ue_per_year"]
    assert calib.is_displayed() and f"= {p:.2%} against the cited 1.3%" in calib.text
    assert calib.find_element(By.XPATH, "following-sibling::p").text  # its explanation
    bg = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert (bg == "rgb(13, 17, 23)") == dark
    # no console error, no request leaving the file
    errors = [x for x in browser.get_log("browser") if x["level"] == "SEVERE"]
    assert not errors, errors
    urls = [json.loads(x["message"])["message"].get("params", {}).get("request", {}).get("url")
            for x in browser.get_log("performance")]
    assert not [u for u in urls if u and not u.startswith(("file:", "data:", "about:"))]
    shot = tmp_path / f"report-{width}-{'dark' if dark else 'light'}.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    out = os.environ.get("MEMFAIL_REPORT_SHOTS")
    if out and width == 1280 and not dark:
        _section_shots(browser, Path(out))


def test_minimum_section_shows_the_search_it_was_given(report: dict[str, Any],
                                                       browser: Any) -> None:
    """"What does minimum support look like?", as the reader sees it, lists the minimal
    policies and the answers of the ``memfail search --json`` document given with
    ``--search-json``: same count, same costs, same knobs (those differing from the search's
    base preset), the command's own answer sentences."""
    from selenium.webdriver.common.by import By

    from memfail.model.policy.registry import PRESETS
    from memfail.search.report import words
    from memfail.search.space import value_text

    doc = report["search"]
    assert doc["minimal"] and doc["answers"]
    assert report["data"]["search"] == doc
    base = PRESETS[doc["config"]["base"]].knobs()

    def knobs(k: dict[str, Any]) -> set[str]:
        return {f"{a}={value_text(b)}" for a, b in k.items() if base[a] != b} or {"(same)"}

    _open(browser, report["path"], 1280, False)
    sec = browser.find_element(By.ID, "minimum")
    rows = sec.find_elements(By.CSS_SELECTOR, "table.search-minimal tbody tr")
    assert len(rows) == len(doc["minimal"])
    for row, m in zip(rows, doc["minimal"], strict=True):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
        assert row.is_displayed() and cells[2] == f"{m['cost']:g}"
        assert set(cells[1].split()) == knobs(m["knobs"])
        assert cells[4] == m["closest_preset"]
    rows = sec.find_elements(By.CSS_SELECTOR, "table.search-answers tbody tr")
    assert len(rows) == len(doc["answers"])
    for row, a in zip(rows, doc["answers"], strict=True):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
        assert cells[0] == a["property_set"] and cells[3] == f"{a['cost']:g}"
        assert set(cells[2].split()) == knobs(a["policy"])
    said = [li.text for li in sec.find_elements(By.CSS_SELECTOR, "ul.search-words li")]
    assert said == words(doc)
    shown = [r.find_element(By.TAG_NAME, "th").text
             for r in sec.find_elements(By.CSS_SELECTOR, "table.search-presets tbody tr")]
    assert shown == [p["name"] for p in doc["presets"]]


def _section_shots(drv: Any, out: Path) -> None:
    """One screenshot per section (its heading and first screenful), for docs/report.md."""
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 760, "deviceScaleFactor": 1, "mobile": False})
    for sid, _ in (("top", ""), *SECTIONS):
        if sid == "top":
            drv.execute_script("window.scrollTo(0, 0)")
        else:
            drv.execute_script("arguments[0].scrollIntoView()",
                               drv.find_element(By.ID, sid))
        shot = out / f"{sid}.png"
        drv.save_screenshot(str(shot))
        from PIL import Image  # matplotlib's dependency: a palette PNG keeps the docs small

        with Image.open(shot) as im:
            im.convert("RGB").quantize(colors=64).save(shot, optimize=True)


PRINT_HIDDEN = """
const out = {hidden: [], wide: []};
const w = document.documentElement.clientWidth;
for (const el of document.querySelectorAll(
        'section, h2, h3, table, svg.fig, figure, details > *, p, li')) {
  const r = el.getBoundingClientRect();
  const name = `${el.tagName}.${el.className.baseVal ?? el.className}#${el.id}: ` +
               (el.textContent || '').slice(0, 50);
  if (r.width === 0 || r.height === 0 ||
      !el.checkVisibility({visibilityProperty: true, opacityProperty: true}))
    out.hidden.push(name);
  if (r.right > w + 1) out.wide.push(`${name} (right edge ${Math.round(r.right)} px)`);
}
return out;
"""


def test_nothing_is_hidden_or_cut_off_when_printed(report: dict[str, Any],
                                                   browser: Any) -> None:
    """With print media emulated at an A4 page's printable width (718 px: 8.27 in less the
    default 0.4 in margins), every section, heading, table, figure, paragraph and list item
    is visible (the folded <details> too: a reader cannot unfold paper) and none is wider than
    the page (print has no sideways scroll)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 718, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print", "features": []})
    try:
        browser.get(report["path"].as_uri())
        got = browser.execute_script(PRINT_HIDDEN)
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
    assert not got["hidden"]
    assert not got["wide"]
    # the same check on screen does see the folded details: it can fail
    _open(browser, report["path"], 1280, False)
    assert browser.execute_script(PRINT_HIDDEN)["hidden"]


def test_page_prints(report: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    _open(browser, report["path"], 1280, False)
    pdf = browser.execute_cdp_cmd("Page.printToPDF", {"printBackground": False,
                                                      "paperWidth": 8.27, "paperHeight": 11.7})
    raw = base64.b64decode(pdf["data"])
    assert raw.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", raw))
    assert pages >= len(SECTIONS)  # every section starts a page when printed
    (tmp_path / "report.pdf").write_bytes(raw)
