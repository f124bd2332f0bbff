/**
 * The trace viewer page's own style and script (view.ts puts them inline).
 * The script reads the JSON block `#trace-data` (view.ts's ViewModel plus a
 * readable line per record) and drives the page: the connection picker, the
 * path and coverage classes on the drawings' `state:` / `tr:` elements, and
 * the step slider. It loads nothing: no module, no fetch, no URL.
 *
 * Classes on drawing elements: `visited` (a state the connection was ever
 * in), `taken` (a transition it took), `active` (a state active at the
 * current step), `current` (a transition the current step took); `#charts`
 * gets `coverage` while the coverage overlay is on (transitions not taken are
 * dimmed).
 */

export const PAGE_STYLE = `
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1f2933; background: #fafafa; }
#toolbar { position: sticky; top: 0; z-index: 2; display: flex; flex-wrap: wrap; gap: .6em; align-items: center; padding: .5em 1em; background: #eef2f7; border-bottom: 1px solid #c9d3df; }
#toolbar h1 { font-size: 1.1em; margin: 0 1em 0 0; }
#step-slider { flex: 1 1 20em; }
main { display: grid; grid-template-columns: minmax(22em, 36%) 1fr; gap: 1em; padding: 1em; }
#details { min-width: 0; position: sticky; top: 4.5em; align-self: start; max-height: calc(100vh - 5.5em); overflow: auto; }
#details h2 { font-size: 1em; margin: 1em 0 .3em; }
#details dl { display: grid; grid-template-columns: 7em 1fr; gap: .2em .6em; margin: 0; }
#details dt { font-weight: 600; color: #52606d; }
#details dd { margin: 0; min-width: 0; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; }
#step-context { max-height: 22em; overflow: auto; }
#coverage p { margin: .1em 0; }
#sequence { position: relative; max-height: 45vh; overflow: auto; border: 1px solid #d5dde6; background: #fff; }
.sequence h3 { font-size: .95em; margin: .4em .6em; }
.sequence .truncated { margin: 0 .6em; color: #9a3412; }
.lifelines { display: flex; justify-content: space-between; padding: 0 .6em; font-weight: 600; color: #52606d; }
.sequence ol { list-style: none; margin: 0; padding: 0 .6em .6em; font-family: ui-monospace, monospace; font-size: 12px; }
.sequence li { position: relative; margin: 2px 0; padding: 1px 4px; cursor: pointer; border-left: 2px solid #9aa5b1; border-right: 2px solid #9aa5b1; }
.sequence li.c2s span::after { content: " →"; }
.sequence li.s2c { text-align: right; }
.sequence li.s2c span::before { content: "← "; }
.sequence li.c2s { background: #e8f1fb; }
.sequence li.s2c { background: #edf7ed; }
.sequence li.note { color: #52606d; font-style: italic; text-align: center; }
.sequence li.refusal, .sequence li.close { color: #9b1c1c; }
.sequence li.tls { color: #5b21b6; }
.sequence li.here { outline: 2px solid #d97706; }
#charts { min-width: 0; }
figure.machine { margin: 0 0 1em; background: #fff; border: 1px solid #d5dde6; }
figure.machine figcaption { font-weight: 600; padding: .3em .6em; background: #f3f5f8; }
.chart { overflow: auto; }
.chart { max-height: 85vh; }
#charts.fit .chart svg { width: 100%; height: auto; }
#charts .visited > path, #charts .visited > polygon, #charts .visited > ellipse { stroke: #2563eb; stroke-width: 2px; }
#charts .taken > path { stroke: #2563eb; stroke-width: 2px; }
#charts .taken > polygon { stroke: #2563eb; fill: #2563eb; }
#charts .taken text { fill: #1d4ed8; font-weight: 700; }
#charts .node.active > path, #charts .node.active > ellipse { fill: rgba(250, 204, 21, .45); stroke: #d97706; stroke-width: 3px; }
#charts .cluster.active > path { stroke: #d97706; stroke-width: 3px; }
#charts .current > path { stroke: #dc2626; stroke-width: 3px; }
#charts .current > polygon { stroke: #dc2626; fill: #dc2626; }
#charts .current text { fill: #dc2626; }
#charts.coverage [id^="tr:"]:not(.taken) { opacity: .2; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
`;

export const PAGE_SCRIPT = `
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('trace-data').textContent);
  var $ = function (id) { return document.getElementById(id); };
  var picker = $('connection-picker'), slider = $('step-slider'), charts = $('charts');
  var states = {}, transitions = {};
  Array.prototype.forEach.call(charts.querySelectorAll('[id]'), function (el) {
    if (el.id.indexOf('state:') === 0) states[el.id.slice(6)] = el;
    else if (el.id.indexOf('tr:') === 0) {
      var id = el.id.slice(3).replace(/#[0-9]+$/, '');
      (transitions[id] = transitions[id] || []).push(el);
    }
  });
  var view = null;

  function unmark(cls) {
    Array.prototype.forEach.call(charts.querySelectorAll('.' + cls), function (el) { el.classList.remove(cls); });
  }
  function markStates(ids, cls) {
    ids.forEach(function (id) { if (states[id]) states[id].classList.add(cls); });
  }
  function markTransitions(ids, cls) {
    ids.forEach(function (id) { (transitions[id] || []).forEach(function (el) { el.classList.add(cls); }); });
  }
  function names(obj) { return Object.keys(obj); }

  function selectConnection(conn) {
    view = null;
    data.connections.forEach(function (c) { if (c.conn === conn) view = c; });
    unmark('visited'); unmark('taken');
    Array.prototype.forEach.call(document.querySelectorAll('#sequence section'), function (s) {
      s.hidden = Number(s.getAttribute('data-conn')) !== conn;
    });
    var cov = $('coverage');
    cov.textContent = '';
    if (!view) return;
    names(view.visited).forEach(function (m) { markStates(view.visited[m], 'visited'); });
    names(view.taken).forEach(function (m) { markTransitions(view.taken[m], 'taken'); });
    names(view.coverage).forEach(function (m) {
      var p = document.createElement('p');
      p.className = 'coverage-count';
      p.setAttribute('data-machine', m);
      p.textContent = m + ': ' + view.coverage[m].taken + ' of ' + view.coverage[m].total + ' transitions taken';
      cov.appendChild(p);
    });
    slider.max = String(Math.max(0, view.records.length - 1));
    slider.value = '0';
    show(0);
  }

  function show(i) {
    if (!view) return;
    var records = view.records, active = {}, snapshots = {}, event = null, lastIn = -1, lastOut = -1;
    view.activity.forEach(function (a) { if (a.at <= i) active[a.actor] = a.active; });
    for (var j = 0; j <= i && j < records.length; j++) {
      var r = records[j];
      if (r.type === 'snapshot') snapshots[r.actor] = r;
      if (r.type === 'step' || r.type === 'event') event = r;
      if (r.type === 'frame') { if (r.dir === 'in') lastIn = j; else lastOut = j; }
    }
    var here = records[i];
    unmark('active'); unmark('current');
    names(active).forEach(function (a) { markStates(active[a], 'active'); });
    if (here && here.type === 'step') markTransitions(here.transitions, 'current');
    $('step-index').textContent = 'record ' + (i + 1) + ' of ' + records.length;
    $('step-record').textContent = here ? view.lines[i] : '';
    $('step-event').textContent = event ? event.actor + ': ' + event.event + (event.fields ? ' ' + JSON.stringify(event.fields) : '') : '';
    var frames = [];
    [lastIn, lastOut].sort(function (a, b) { return a - b; }).forEach(function (k) {
      if (k < 0) return;
      frames.push((k === i ? '▶ ' : '') + view.lines[k]);
      var f = records[k];
      names(f.fields).forEach(function (n) { frames.push('    ' + n + ': ' + JSON.stringify(f.fields[n])); });
      if (f.payload) frames.push('    payload: ' + JSON.stringify(f.payload));
    });
    $('step-frame').textContent = frames.join('\\n');
    $('step-active').textContent = names(active).map(function (a) { return a + ': ' + active[a].join(', '); }).join('\\n');
    $('step-context').textContent = names(snapshots).map(function (a) {
      var s = snapshots[a];
      return a + ' (' + s.status + ') ' + JSON.stringify(s.value) + '\\n' + JSON.stringify(s.context || {}, null, 2);
    }).join('\\n\\n');
    var section = document.querySelector('#sequence section[data-conn="' + view.conn + '"]');
    Array.prototype.forEach.call(document.querySelectorAll('#sequence li.here'), function (li) { li.classList.remove('here'); });
    if (section) {
      var rows = section.querySelectorAll('li'), mark = null;
      for (var k = 0; k < rows.length && Number(rows[k].getAttribute('data-step')) <= i; k++) mark = rows[k];
      if (mark) {
        mark.classList.add('here');
        var box = $('sequence');
        if (mark.offsetTop < box.scrollTop || mark.offsetTop > box.scrollTop + box.clientHeight - 20) box.scrollTop = mark.offsetTop - box.clientHeight / 2;
      }
    }
  }

  function go(i) {
    if (!view) return;
    var n = Math.max(0, Math.min(view.records.length - 1, i));
    slider.value = String(n);
    show(n);
  }

  picker.addEventListener('change', function () { selectConnection(Number(picker.value)); });
  slider.addEventListener('input', function () { show(Number(slider.value)); });
  $('step-prev').addEventListener('click', function () { go(Number(slider.value) - 1); });
  $('step-next').addEventListener('click', function () { go(Number(slider.value) + 1); });
  $('fit-toggle').addEventListener('change', function () { charts.classList.toggle('fit', this.checked); });
  $('coverage-toggle').addEventListener('change', function () { charts.classList.toggle('coverage', this.checked); });
  $('sequence').addEventListener('click', function (e) {
    var li = e.target.closest ? e.target.closest('li[data-step]') : null;
    if (li) go(Number(li.getAttribute('data-step')));
  });
  document.addEventListener('keydown', function (e) {
    if (e.target === slider || e.target === picker) return;
    if (e.key === 'ArrowRight') go(Number(slider.value) + 1);
    if (e.key === 'ArrowLeft') go(Number(slider.value) - 1);
  });
  if (data.connections.length > 0) selectConnection(data.connections[0].conn);
})();
`;
