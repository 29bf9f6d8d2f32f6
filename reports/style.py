"""The stylesheet of report.html (inlined in its <style>)."""

CSS = """
:root { --fg:#1d1d1f; --muted:#6b6b70; --line:#e2e2e6; --accent:#4C72B0; --bg-soft:#f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1500px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--bg-soft); padding: 10px 12px; border-radius: 6px; overflow-x: auto; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: var(--muted); margin: 6px 0 0; }
.meta b { color: var(--fg); font-weight: 600; }
.meta .bad b { color: #b3261e; }
nav { margin: 10px 0 0; font-size: 13px; } nav a { margin-right: 14px; color: var(--accent); }
table { border-collapse: collapse; }
table.summary { margin: 6px 0 8px; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: right;
  vertical-align: top; white-space: nowrap; }
table.summary thead th { background: var(--bg-soft); font-weight: 600; border-bottom: 2px solid #cfcfd6; }
table.summary th.model-col, table.summary tbody th { text-align: left; }
table.summary .arrow { color: var(--accent); font-weight: 700; }
table.summary .unit { font-weight: 400; color: var(--muted); font-size: 11px; }
table.summary .ci { color: var(--muted); font-size: 12px; }
table.summary .n { display: block; color: var(--muted); font-size: 10.5px; }
table.summary td.best { background: #eef5ea; }
table.summary td.na { color: #9a9aa0; text-align: center; }
tr.baseline { background: #fafaf7; } tr.baseline .model-name { font-style: italic; }
tr.real { border-top: 2px solid #cfcfd6; background: #f7f8fb; }
.sub { color: var(--muted); font-size: 11px; font-weight: 400; }
.badge { display: inline-block; font-size: 10.5px; font-weight: 600; padding: 1px 6px; border-radius: 9px;
  vertical-align: 1px; }
.badge.baseline { background: #efe9dc; color: #6d5a2c; } .badge.real { background: #e3e8f4; color: #34508a; }
.notes p { margin: 4px 0; color: #3a3a3f; max-width: 1100px; }
.callout { border-left: 4px solid #d4b46a; background: #fbf8f0; padding: 8px 12px; margin: 10px 0;
  max-width: 1100px; }
.checks { margin: 6px 0 0; padding-left: 18px; } .checks .ok { color: #2e6b34; } .checks .warn { color: #a5371d; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 10px 22px; }
figure.plot { margin: 0; }
.small { font-size: 12px; color: var(--muted); }
.grid-wrap { overflow-x: auto; }
table.grid th, table.grid td { padding: 4px 6px; vertical-align: top; text-align: center; }
table.grid thead th { font-weight: 600; font-size: 12px; border-bottom: 1px solid var(--line); }
table.grid th.case { text-align: left; max-width: 190px; font-weight: 400; }
table.grid .case-id { font-weight: 600; word-break: break-all; }
table.grid .prompt { color: var(--muted); font-size: 11px; font-style: italic; white-space: normal; }
table.grid img { display: block; margin: 0 auto; image-rendering: auto; background: #000; }
table.grid .cap { font-size: 10.5px; color: var(--muted); max-width: 170px; margin: 2px auto 0; }
.ph { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center; padding: 8px;
  background: repeating-linear-gradient(45deg, #f4f4f6, #f4f4f6 8px, #ececf0 8px, #ececf0 16px);
  color: #8a2b1d; font-size: 11px; overflow: hidden; word-break: break-word; border: 1px dashed #c9c9d0; }
table.plain th, table.plain td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; font-size: 12.5px; }
table.failures td:last-child { white-space: pre-wrap; word-break: break-word; max-width: 700px;
  font-family: ui-monospace, monospace; font-size: 11.5px; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 48px; }
h4 { font-size: 13px; margin: 14px 0 4px; }
.result-table { margin: 8px 0 22px; } .result-table > p.small { margin: 0 0 4px; max-width: 1100px; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table.summary .by { font-weight: 400; color: var(--muted); font-size: 10.5px; margin-top: 1px;
  white-space: normal; overflow-wrap: anywhere; }
table.summary .flag { color: #b3261e; font-weight: 700; cursor: help; }
table.summary .pm { color: var(--muted); font-size: 12px; }
table.summary tr.band th { text-align: left; background: #eef0f5; font-size: 12.5px; padding: 5px 12px; }
table.per-class thead th { text-align: right; }
.demo-flag { display: inline-block; font-size: 10px; font-weight: 600; padding: 0 5px; border-radius: 8px;
  background: #fbe3df; color: #8a2b1d; }
.callout.warn { border-left-color: #c4412f; background: #fdf2f0; }
.callout ul.reasons { margin: 6px 0 0; padding-left: 18px; } .callout ul.reasons li { margin: 3px 0; }
.callout table.plain { margin-top: 6px; background: white; }
.warn-note { color: #a5371d; font-weight: 600; }
table.evaluators td { max-width: 360px; white-space: normal; } table.evaluators td.warn { color: #a5371d; }
table.evaluators code { white-space: normal; word-break: break-word; }
details.evaluation-json summary { cursor: pointer; font-weight: 600; margin: 14px 0 6px; }
details.group-column > summary { cursor: pointer; font-size: 15px; font-weight: 600; margin: 18px 0 6px; }
table.stats { font-variant-numeric: tabular-nums; margin: 4px 0 10px; }
table.stats td { white-space: nowrap; } table.stats td[data-col="warnings"], table.stats td[data-col="note"] {
  white-space: normal; max-width: 420px; }
table.stats .ci { color: var(--muted); font-size: 11.5px; } table.stats td.sig { font-weight: 600; }
table.stats td.warn { color: #a5371d; } table.stats td.na { color: #9a9aa0; }
table.stats.validity .n { display: block; color: var(--muted); font-size: 10.5px; }
details.paired-metric > summary, details.validity-per-class > summary { cursor: pointer; font-weight: 600;
  margin: 12px 0 4px; }
"""
