"""The HTML report's style sheet and script: static text, kept apart from the code that builds the page."""

CSS = """
:root{--ok:#1a7f37;--over:#cf222e;--inc:#bf8700;--shrank:#0969da;--new:#6e7781;--upd:#8250df;
--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);background:var(--bg)}
header{padding:18px 28px 10px;border-bottom:1px solid var(--line);background:var(--soft)}
h1{margin:0 0 6px;font-size:22px}
h2{margin:0;font-size:17px}
h3{margin:0 0 8px;font-size:15px;display:flex;gap:8px;align-items:center;word-break:break-all}
h4{margin:0 0 8px;font-size:13px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
main{padding:16px 28px 40px}
code{font:13px/1.3 ui-monospace,"DejaVu Sans Mono",monospace}
.muted{color:var(--muted)}.small{font-size:12px;margin:2px 0 10px}
.summary{margin:4px 0}
.chip,.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
color:#fff;margin-left:4px;white-space:nowrap}
.badge{margin:0}
.v-over{background:var(--over)}.v-inconclusive{background:var(--inc)}.v-ok{background:var(--ok)}
.v-shrank{background:var(--shrank)}.v-new{background:var(--new)}.v-updated{background:var(--upd)}
.env{display:flex;flex-wrap:wrap;gap:4px 18px;margin:8px 0 0;font-size:12px}
.env div,.stats div{display:flex;gap:6px}.env dt,.stats dt{color:var(--muted)}.env dd,.stats dd{margin:0}
.toolbar{display:flex;justify-content:space-between;align-items:center;margin-bottom:8px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{background:var(--soft);white-space:nowrap}
th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0;color:inherit}
th[aria-sort=descending] button::after{content:" ▼"}th[aria-sort=ascending] button::after{content:" ▲"}
.num{text-align:right;font-variant-numeric:tabular-nums}
td a{color:var(--fg);text-decoration:none;font-family:ui-monospace,"DejaVu Sans Mono",monospace;
font-size:12px;word-break:break-all}
td a:hover{text-decoration:underline}
td.use{white-space:nowrap}
.mini{display:inline-block;width:70px;height:8px;background:var(--soft);border:1px solid var(--line);
border-radius:4px;overflow:hidden;vertical-align:middle;margin-right:6px;position:relative}
.mini span{display:block;height:100%}
.mini::after{content:"";position:absolute;left:80%;top:-1px;bottom:-1px;border-left:1px solid var(--fg)}
.pct{font-weight:600;font-variant-numeric:tabular-nums}
.call{border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:18px 0}
.stats{display:flex;flex-wrap:wrap;gap:2px 18px;margin:0}
.panels{display:flex;flex-wrap:wrap;gap:16px 28px;margin-top:6px}
.panel{flex:1 1 440px;min-width:0}
.check{display:grid;grid-template-columns:150px 1fr;gap:2px 10px;align-items:center;margin:0 0 10px}
.check .what{grid-row:span 2}
.track{position:relative;height:14px;border-radius:3px;
background:linear-gradient(90deg,var(--soft) 0 80%,transparent 80%),
repeating-linear-gradient(135deg,#fbe3e4 0 5px,#fff 5px 10px);border:1px solid var(--line)}
.fill{position:absolute;left:0;top:0;bottom:0;border-radius:2px 0 0 2px}
.fill.clipped{clip-path:polygon(0 0,calc(100% - 7px) 0,100% 50%,calc(100% - 7px) 100%,0 100%)}
.limit{position:absolute;left:80%;top:-4px;bottom:-4px;border-left:2px solid var(--fg)}
.tol{position:absolute;top:-2px;bottom:-2px;border-left:2px dotted var(--muted)}
.value{font-size:12px;font-variant-numeric:tabular-nums}
.status{font-weight:600;text-transform:uppercase;font-size:11px}
.s-ok .fill,.s-ok.mini span{background:var(--ok)}.s-ok .status{color:var(--ok)}
.s-over .fill,.s-over.mini span{background:var(--over)}.s-over .status{color:var(--over)}
.s-inconclusive .fill,.s-inconclusive.mini span{background:var(--inc)}
.s-inconclusive .status{color:var(--inc)}
.s-shrank .fill,.s-shrank.mini span{background:var(--shrank)}.s-shrank .status{color:var(--shrank)}
.s-updated .fill,.s-updated.mini span{background:var(--upd)}.s-updated .status{color:var(--upd)}
.legend{font-size:11px;color:var(--muted);margin:4px 0 0}
.note{font-size:12px;color:var(--inc);margin:-6px 0 10px 160px}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;font-size:12px}
svg.modules{width:100%;max-width:560px;height:auto;overflow:visible}
svg .lbl{font:12px ui-monospace,"DejaVu Sans Mono",monospace;fill:var(--fg)}
svg .val{font-size:11px;fill:var(--muted)}
svg .bar{fill:#0969da}svg .grew{fill:var(--over)}svg .other{fill:#8c959f}
svg .base{stroke:var(--fg);stroke-width:2}
"""

# Sorting without a library: rows (and the sections below them) are re-appended in order.
SCRIPT = r"""
(function () {
  var table = document.getElementById("tests"), body = table.tBodies[0];
  var calls = document.getElementById("calls"), select = document.getElementById("sort");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function sortBy(key, descending) {
    var numeric = key !== "name", rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.getAttribute("data-" + key), y = b.getAttribute("data-" + key);
      if (numeric) { x = parseFloat(x); y = parseFloat(y); }
      var order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    rows.forEach(function (row) {
      body.appendChild(row);
      var section = document.getElementById(row.getAttribute("data-section"));
      if (section) { calls.appendChild(section); }
    });
    heads.forEach(function (th) {
      if (th.getAttribute("data-key") === key) {
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      } else { th.removeAttribute("aria-sort"); }
    });
    select.value = key + "-" + (descending ? "desc" : "asc");
  }
  heads.forEach(function (th) {
    th.querySelector("button").addEventListener("click", function () {
      var key = th.getAttribute("data-key"), current = th.getAttribute("aria-sort");
      var descending = current ? current === "ascending" : th.getAttribute("data-numeric") === "1";
      sortBy(key, descending);
    });
  });
  select.addEventListener("change", function () {
    var parts = select.value.split("-");
    sortBy(parts[0], parts[1] === "desc");
  });
  // A link can choose the order: report.html#sort=name-asc
  var wanted = /sort=(\w+)-(asc|desc)/.exec(window.location.hash);
  if (wanted && table.querySelector('th[data-key="' + wanted[1] + '"]')) {
    sortBy(wanted[1], wanted[2] === "desc");
  }
})();
"""
