"""The HTML report: one self-contained page, escaped, sorted by budget use, with charts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest

from pytest_modelbudget.budgets.budget import Source
from pytest_modelbudget.budgets.checks import Check, Status, call_verdict
from pytest_modelbudget.budgets.results import CallResult
from pytest_modelbudget.core.timing.timer import TimingStats
from pytest_modelbudget.report.html import MODULES_SHOWN, render

EVIL = "tests/test_x.py::test_evil[<script>alert(1)</script>]"
ENVIRONMENT = {"plugin": "0.1.0", "torch": "2.14.1", "python": "3.11.2", "cpu": "Some CPU <fast>"}


def check(metric: str, measured: float, reference: float, source: str, status: str, *rest: object) -> Check:
    return Check(metric, measured, reference, Source(source), Status(status), *rest)  # type: ignore[arg-type]


def call(nodeid: str, checks: tuple[Check, ...], *, modules: int = 4, **fields: object) -> CallResult:
    macs = {f"layer{i}": 1000 * (i + 1) for i in range(modules)}
    values: dict[str, object] = {
        "nodeid": nodeid,
        "name": None,
        "metrics": {"macs": sum(macs.values()), "flops": 2 * sum(macs.values()), "params": 500, "size": 2000},
        "modules": {path: {"macs": m, "params": 10} for path, m in macs.items()},
        "uncounted": {},
        "convention": "aten-macs/1",
        "executed_on": "meta",
        "checks": checks,
        "has_baseline": True,
        **fields,
    }
    if isinstance(values.get("timing"), dict):
        values["timing"] = TimingStats.from_dict(values["timing"])  # type: ignore[arg-type]
    values["verdict"] = call_verdict(
        checks, has_baseline=bool(values["has_baseline"]), updating=bool(values.get("updating"))
    )
    return CallResult(**values)  # type: ignore[arg-type]


def sample_results() -> list[CallResult]:
    return [
        call("tests/test_a.py::test_half", (check("macs", 5000, 10_000, "marker", "ok"),)),
        call(
            "tests/test_b.py::test_grew",
            (
                check("macs", 30_000, 15_000, "baseline", "over", 0.02),
                check("params", 500, 450, "baseline", "over"),
                check("size", 2000, 4000, "budgets.yaml limits", "ok"),
            ),
            modules=20,
            baseline_modules={"layer19": {"macs": 10_000, "params": 10}},
        ),
        call(
            "tests/test_c.py::test_timed",
            (
                check("macs", 9000, 10_000, "marker", "ok"),
                check("latency_ms", 12.5, 12.0, "baseline", "inconclusive", 0.1, "the machine was slow"),
                check("throughput", 80.0, 100.0, "marker", "over"),
            ),
            name="batch8",
            timing={
                "median_ms": 12.5,
                "p90_ms": 13.1,
                "min_ms": 12.0,
                "mean_ms": 12.6,
                "iqr_ms": 0.4,
                "samples": 40,
                "calls": 400,
                "wall_s": 1.5,
                "fingerprint": "cpu | Some CPU | 1 | float32 | eager",
                "batch_size": 1,
                "peak_memory": None,
            },
            uncounted={"aten._fft_r2c": 2},
        ),
        call(EVIL, (check("params", 110, 100, "marker", "over"),), modules=1),
        call("tests/test_d.py::test_unchecked", (), has_baseline=False, modules=0),
    ]


@pytest.fixture(scope="module")
def page() -> str:
    # Through JSON and back, as results travel from xdist workers.
    dicts = json.loads(json.dumps([r.to_dict() for r in sample_results()]))
    return render(
        [CallResult.from_dict(d) for d in dicts], title="Model budgets <run>", environment=ENVIRONMENT
    )


def sections(page: str) -> dict[str, str]:
    """The HTML of each call's section, by the label in its heading."""
    found = re.findall(r'<section class="call" id="call-\d+".*?<code>(.*?)</code>(.*?)</section>', page, re.S)
    return dict(found)


class _Balance(HTMLParser):
    VOID: ClassVar[set[str]] = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_the_page_is_well_formed_and_deterministic(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    parser = _Balance()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert render(sample_results(), title="Model budgets <run>", environment=ENVIRONMENT) == page


def test_no_external_resources(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert links and all(link.startswith("#call-") for link in links)  # only in-page anchors
    for tag in ("<link", "<img", "<iframe", "@import", "url("):
        assert tag not in page
    assert page.count("<script>") == 1  # our own inline sorter, nothing else


def test_all_text_is_escaped(page: str) -> None:
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Model budgets &lt;run&gt;</title>" in page
    assert "Some CPU &lt;fast&gt;" in page


def test_one_module_chart_per_call_with_the_rest_grouped_as_other(page: str) -> None:
    found = sections(page)
    assert len(found) == 5 == page.count("<svg")
    grew = found["tests/test_b.py::test_grew"]
    assert grew.count("<svg") == 1
    assert grew.count("<rect") == MODULES_SHOWN  # 11 largest + "other"
    assert f"other ({20 - MODULES_SHOWN + 1} modules)" in grew
    assert 'class="grew"' in grew and 'class="base"' in grew  # layer0 grew past its baseline
    assert found["tests/test_a.py::test_half"].count("<rect") == 4
    assert "no MACs counted" in found["tests/test_d.py::test_unchecked"]


def test_a_bar_for_every_check_coloured_by_status(page: str) -> None:
    for result in sample_results():
        label = result.nodeid.replace("<", "&lt;").replace(">", "&gt;") + (
            f" [{result.name}]" if result.name else ""
        )
        html = sections(page)[label]
        bars = re.findall(r'<div class="check s-(\w+)" data-metric="(\w+)"', html)
        assert sorted(bars) == sorted((c.status, c.metric) for c in result.checks)


def test_overflowing_bars_run_past_the_limit_line(page: str) -> None:
    grew = sections(page)["tests/test_b.py::test_grew"]
    # 100% of a budget sits at 80% of the track; 200% is clipped with an arrow end.
    assert '<span class="fill clipped" style="width:100.0%">' in grew
    assert '<span class="fill" style="width:40.0%">' in grew  # size: 50%
    assert '<span class="fill" style="width:88.9%">' in grew  # params: 111%
    assert '<span class="tol" style="left:81.6%">' in grew  # macs baseline tolerance 2%
    assert "<b>200%</b>" in grew


def test_calls_are_sorted_by_the_highest_budget_use(page: str) -> None:
    rows = re.findall(
        r'<tr data-section="call-\d+" data-name="([^"]*)" data-verdict="\d" data-usage="([^"]*)"', page
    )
    usages = [float(u) for _, u in rows]
    assert usages == sorted(usages, reverse=True)
    assert [name for name, _ in rows] == [
        "tests/test_b.py::test_grew",  # 200%
        "tests/test_c.py::test_timed [batch8]",  # throughput 125%
        EVIL.replace("<", "&lt;").replace(">", "&gt;"),  # 110%
        "tests/test_a.py::test_half",  # 50%
        "tests/test_d.py::test_unchecked",  # nothing checked
    ]
    assert list(sections(page)) == [name for name, _ in rows]  # sections in the same order


def test_summary_notes_and_timing(page: str) -> None:
    assert '<span class="chip v-over">3 over</span>' in page
    assert '<span class="chip v-new">1 new</span>' in page
    timed = sections(page)["tests/test_c.py::test_timed [batch8]"]
    assert "12.5 ms (p90 13.1 ms, IQR 400 us, 40 samples)" in timed
    assert '<p class="note">the machine was slow</p>' in timed
    assert "aten._fft_r2c x2" in timed


def test_an_updating_run_shows_accepted_growth_as_updated() -> None:
    result = call("tests/test_u.py::test_u", (check("macs", 2000, 1000, "baseline", "over"),), updating=True)
    page = render([result], title="t", environment={})
    assert 'class="check s-updated"' in page
    assert '<span class="chip v-updated">1 updated</span>' in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium for a headless render")
def test_chromium_draws_the_charts_and_the_sorter_works(page: str, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    # The sorter ran in a real browser: #sort=name-asc reorders the rows by name.
    dom = _chromium(tmp_path, "--dump-dom", f"{report.as_uri()}#sort=name-asc").stdout
    names = re.findall(r'<tr data-section="call-\d+" data-name="([^"]*)"', dom)
    assert len(names) == 5 and names == sorted(names)
    assert '<th data-key="name" data-numeric="0" aria-sort="ascending">' in dom

    from PIL import Image

    png = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,1600", report.as_uri())
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 1600)
    colors = image.getcolors(maxcolors=1 << 20) or []
    pixels = {rgb: n for n, rgb in colors}
    # Bars and chart rects were painted: the CSS colours of over (red), ok (green) and
    # the module bars (blue) cover real areas, not a blank page.
    assert pixels.get((0xCF, 0x22, 0x2E), 0) > 500
    assert pixels.get((0x1A, 0x7F, 0x37), 0) > 200
    assert pixels.get((0x09, 0x69, 0xDA), 0) > 500


def test_a_quantized_call_shows_the_dtypes_its_macs_ran_in() -> None:
    mixed = call("tests/test_q.py::test_int8", (), macs_by_dtype={"int8": 9000, "float32": 1000})
    plain = call("tests/test_f.py::test_float", (), macs_by_dtype={"float32": 10_000})
    page = render([mixed, plain], title="t", environment={})
    found = sections(page)
    assert "<dt>MACs by dtype</dt><dd>int8 9 k, float32 1 k</dd>" in found["tests/test_q.py::test_int8"]
    assert "MACs by dtype" not in found["tests/test_f.py::test_float"]  # all float32: nothing to say
