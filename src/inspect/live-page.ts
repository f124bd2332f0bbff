/**
 * The live view's page: one HTML document with its style, its script and the
 * three statecharts (SVG drawn from the machine definitions) inline. It
 * opens a WebSocket to `/events` on the host that served it and shows, for
 * the connection picked (the newest by default), the states each machine is
 * in (class `active` on the chart's `state:<id>` elements, as each message's
 * `active` lists them), the transitions
 * its last step took (class `taken` on `tr:<id>`), and the transcript.
 */

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; display: grid; grid-template-columns: 18rem 1fr; height: 100vh; }
header { grid-column: 1 / 3; padding: .4rem .8rem; background: #223; color: #eee; display: flex; gap: 1rem; align-items: baseline; }
header h1 { font-size: 1rem; margin: 0; }
#status.up { color: #8f8; } #status.down { color: #f88; }
nav { overflow: auto; border-right: 1px solid #ccc; }
nav ul { list-style: none; margin: 0; padding: 0; }
nav li { padding: .35rem .6rem; border-bottom: 1px solid #eee; cursor: pointer; }
nav li.selected { background: #e8eefc; }
nav li.closed { color: #888; }
nav li small { display: block; color: #555; font-family: ui-monospace, monospace; }
main { overflow: auto; padding: .5rem .8rem; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.chart { border: 1px solid #ddd; padding: .3rem; max-width: 100%; overflow: auto; }
.chart h2 { font-size: .9rem; margin: 0 0 .2rem; }
.chart svg { max-width: 60rem; height: auto; }
.active > polygon, .active > ellipse, .active > path { stroke: #c22; stroke-width: 3px; }
g.node.active > polygon, g.node.active > ellipse { fill: #fde2e2; }
.taken > path { stroke: #1a7f37; stroke-width: 3px; }
.taken > polygon { stroke: #1a7f37; fill: #1a7f37; }
#log { font: 12px/1.35 ui-monospace, monospace; white-space: pre-wrap; background: #f7f7f9; padding: .4rem; max-height: 22rem; overflow: auto; }
`;

/** The page's script (plain ES2020, no imports). */
const SCRIPT = `
const conns = new Map();
let selected = null;
let pinned = false;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
function conn(id) {
  let c = conns.get(id);
  if (!c) { c = { id, peer: '', actors: {}, taken: {}, lines: [], closed: null }; conns.set(id, c); }
  return c;
}
function summary(c) {
  if (c.closed) return 'closed: ' + c.closed;
  const parts = [];
  for (const m of ['handshake', 'transmission']) if (c.actors[m]) parts.push(m + ' ' + JSON.stringify(c.actors[m].value));
  return parts.join(' · ');
}
function renderList() {
  const ids = [...conns.keys()].sort((a, b) => b - a);
  $('connections').innerHTML = ids.map((id) => {
    const c = conns.get(id);
    const cls = [id === selected ? 'selected' : '', c.closed ? 'closed' : ''].join(' ');
    return '<li id="conn-' + id + '" data-conn="' + id + '" class="' + cls + '">#' + id + ' ' + esc(c.peer) + '<small>' + esc(summary(c)) + '</small></li>';
  }).join('');
}
function renderSelected() {
  for (const el of document.querySelectorAll('.chart .active, .chart .taken')) el.classList.remove('active', 'taken');
  const c = selected === null ? null : conns.get(selected);
  $('selected').textContent = c ? 'connection #' + c.id + ' ' + c.peer + (c.closed ? ' (closed: ' + c.closed + ')' : '') : 'no connection yet';
  if (!c) { $('log').textContent = ''; return; }
  for (const [machine, a] of Object.entries(c.actors)) {
    const chart = $('chart-' + machine);
    if (!chart) continue;
    for (const id of a.active) { const el = chart.querySelector('[id="state:' + CSS.escape(id) + '"]'); if (el) el.classList.add('active'); }
    for (const id of c.taken[machine] || []) { const el = chart.querySelector('[id="tr:' + CSS.escape(id) + '"]'); if (el) el.classList.add('taken'); }
  }
  $('log').textContent = c.lines.join('\\n');
  $('log').scrollTop = $('log').scrollHeight;
}
function onMessage({ record: r, line, active }) {
  if (r.conn === undefined) return;
  const c = conn(r.conn);
  if (r.type === 'open') c.peer = r.peer;
  if (active) c.actors[r.actor] = { value: r.value, active };
  if (r.type === 'step') c.taken[r.actor] = r.transitions;
  if (r.type === 'close') c.closed = r.code;
  if (line) { c.lines.push(line); if (c.lines.length > 500) c.lines.splice(0, c.lines.length - 500); }
  if (!pinned && (selected === null || r.type === 'open')) selected = r.conn;
  renderList();
  if (r.conn === selected) renderSelected();
}
$('connections').addEventListener('click', (e) => {
  const li = e.target.closest('li[data-conn]');
  if (!li) return;
  selected = Number(li.dataset.conn);
  pinned = true;
  renderList();
  renderSelected();
});
function connect() {
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/events');
  ws.onopen = () => { $('status').textContent = 'live'; $('status').className = 'up'; };
  ws.onclose = () => { $('status').textContent = 'disconnected (retrying)'; $('status').className = 'down'; setTimeout(connect, 1000); };
  ws.onmessage = (m) => onMessage(JSON.parse(m.data));
}
connect();
renderSelected();
`;

/** The whole page, with the statecharts given as SVG text by machine name (already inline: view.ts's inlineSvg). */
export function livePage(charts: Readonly<Record<string, string>>): string {
  const figures = Object.entries(charts)
    .map(([name, svg]) => `<section class="chart" id="chart-${name}"><h2>${name}</h2>${svg}</section>`)
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nbd-engine — live</title><style>${STYLE}</style></head>
<body>
<header><h1>nbd-engine — live</h1><span id="status" class="down">connecting…</span><span id="selected"></span></header>
<nav><ul id="connections"></ul></nav>
<main><div class="charts">${figures}</div><h2>Transcript</h2><div id="log"></div></main>
<script>${SCRIPT}</script>
</body></html>
`;
}
