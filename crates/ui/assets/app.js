// The service map page: fetches a snapshot (graph laid out by the server, flow table) for the
// filters in the page's URL, draws it as SVG, then follows /api/events for live updates.
// No framework and no build step: the server does the aggregation and the layout, so this
// only turns a compact model into SVG elements.

const $ = (s) => document.querySelector(s);
const map = $('#map');
const form = $('#filters');
const FIELDS = [...form.elements].map((e) => e.name).filter((n) => n && n !== 'more');
// Page-only parameters, never sent as filters.
const PAGE_ONLY = ['live'];

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);
const trunc = (s, n) => (s.length > n ? s.slice(0, n - 1) + '…' : s);

const errors = { filter: null, server: null, source: null };
let stream = null;
let view = null;
let userMoved = false;
let painted = false;
let last = null;
let selected = null;
let retry = null;
let fetched = 0;
let told = '';

function showErrors() {
  const box = $('#error');
  const text = [errors.filter, errors.server, errors.source].filter(Boolean).join('\n');
  box.textContent = text;
  box.hidden = !text;
}

function pageQuery() {
  return new URLSearchParams(location.search);
}

function filterQuery() {
  const q = pageQuery();
  for (const p of PAGE_ONLY) q.delete(p);
  return q;
}

function queryToForm(q) {
  const more = new URLSearchParams();
  for (const el of form.elements) if (el.name) el.value = '';
  for (const [k, v] of q) {
    if (PAGE_ONLY.includes(k)) continue;
    const el = FIELDS.includes(k) ? form.elements[k] : null;
    if (el && !el.value) el.value = v;
    else more.append(k, v);
  }
  form.elements.more.value = more.toString();
}

function formToQuery() {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData(form)) {
    if (k === 'more') {
      // A switch (`encrypted`) has no value: keep every named parameter.
      for (const [k2, v2] of new URLSearchParams(v.trim())) if (k2) q.append(k2, v2);
    } else if (v.trim()) {
      q.append(k, v.trim());
    }
  }
  const live = pageQuery().get('live');
  if (live) q.set('live', live);
  return q;
}

// ---- drawing ----

function edgePath(a, b) {
  const x1 = a.x + a.w, y1 = a.y + a.h / 2;
  const x2 = b.x, y2 = b.y + b.h / 2;
  // Forward: an S curve; backward or same column: a loop out to the right and back in.
  const dx = x2 > x1 ? Math.max(30, (x2 - x1) / 2) : 90 + Math.abs(x1 - x2) / 4;
  const c1x = x1 + dx, c2x = x2 - dx;
  // A connection skipping a column would run behind the boxes in between: bow it upwards.
  const span = x2 - x1;
  const bow = span > a.w * 1.5 ? 40 + span * 0.12 : 0;
  const c1y = y1 - bow, c2y = y2 - bow;
  return {
    d: `M${x1},${y1} C${c1x},${c1y} ${c2x},${c2y} ${x2},${y2}`,
    mx: (x1 + 3 * c1x + 3 * c2x + x2) / 8,
    my: (y1 + 3 * c1y + 3 * c2y + y2) / 8,
  };
}

function rate(r) {
  return r >= 10 ? r.toFixed(0) : r >= 0.1 ? r.toFixed(1) : r > 0 ? r.toFixed(2) : '0';
}

function edgeLabel(e) {
  const proto = e.protocol ? (e.port ? `${e.protocol}/${e.port}` : e.protocol) : 'L3';
  const lines = [`${proto} · ${rate(e.rate)}/s`];
  if (e.dropped) lines.push(`${e.dropped} dropped${e.deniedBy.length ? ' by ' + trunc(e.deniedBy.join(', '), 40) : ''}`);
  for (const l of e.l7.slice(0, 3)) {
    lines.push(`${l.method} ${trunc(l.path, 24)}${l.status ? ' → ' + l.status : ''} ×${l.count}`);
  }
  return lines;
}

function edgeTitle(e) {
  let t = `${e.from} → ${e.to}\n${e.protocol || 'L3'} port ${e.port}: ${e.forwarded} forwarded, ${e.dropped} dropped, ${rate(e.rate)} flows/s`;
  if (e.dropReasons.length) t += `\ndropped: ${e.dropReasons.join(', ')}`;
  if (e.deniedBy.length) t += `\ndenied by: ${e.deniedBy.join(', ')}`;
  for (const l of e.l7) t += `\n${l.method} ${l.path}${l.status ? ' → ' + l.status : ''} ×${l.count}`;
  return t;
}

function boxMeta(n) {
  if (n.kind === 'service') return 'Service';
  const ids = n.identities.length ? 'ID ' + n.identities.join(', ') : '';
  if (n.kind === 'workload') {
    const pods = n.podCount ? `${n.podCount} pod${n.podCount === 1 ? '' : 's'}` : '';
    return [ids, pods].filter(Boolean).join(' · ');
  }
  return [n.kind === 'reserved' ? 'reserved' : '', ids].filter(Boolean).join(' · ');
}

function fit(g) {
  const w = Math.max(g.width, 300) + 40, h = Math.max(g.height, 200) + 40;
  view = { x: -20, y: -20, w, h };
}

// Below this many screen pixels per map unit, box and connection texts would be a few pixels
// high: they are left out (not even put into the page) until the user zooms in, which is what
// keeps the first paint of a big map short.
const FAR = 0.3;
let far = false;

function isFar() {
  return !!view && Math.min(map.clientWidth / view.w, map.clientHeight / view.h) < FAR;
}

function applyView() {
  if (!view) return;
  map.setAttribute('viewBox', `${view.x} ${view.y} ${view.w} ${view.h}`);
  // Zoomed across the threshold: draw again with (or without) the texts.
  if (isFar() !== far && last) renderMap(last.graph);
}

function renderMap(g) {
  if (!userMoved || !view) fit(g);
  far = isFar();
  const nodes = new Map(g.nodes.map((n) => [n.id, n]));
  const parts = [
    '<defs>',
    '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#3b7d4f"/></marker>',
    '<marker id="arrow-drop" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#d92d20"/></marker>',
    '</defs>',
  ];
  for (const a of g.areas) {
    parts.push(
      `<g class="area" data-namespace="${esc(a.namespace)}"><rect x="${a.x}" y="${a.y}" width="${a.w}" height="${a.h}"/>` +
        `<text x="${a.x + 12}" y="${a.y + 20}">${esc(a.namespace ? 'namespace ' + a.namespace : 'outside any namespace')}</text></g>`,
    );
  }
  // Big maps: no labels, arrowheads, dashes or tooltips on connections (colour still tells
  // drops; a click on a box lists them), and cheaper rendering hints: what keeps the first
  // paint of 1,000 workloads short.
  const big = g.edges.length > 600;
  const labels = !big && !far;
  const pairs = new Map();
  const texts = [];
  let dropped = 0;
  parts.push(big ? '<g class="edges" shape-rendering="optimizeSpeed">' : '<g class="edges">');
  for (const e of g.edges) {
    const a = nodes.get(e.from), b = nodes.get(e.to);
    if (!a || !b) continue;
    const p = edgePath(a, b);
    const red = e.verdict !== 'forwarded';
    if (red) dropped++;
    parts.push(
      `<path class="edge ${e.verdict}" data-from="${esc(e.from)}" data-to="${esc(e.to)}" data-verdict="${e.verdict}" ` +
        `data-protocol="${esc(e.protocol)}" data-port="${e.port}" d="${p.d}"${big ? '' : ` marker-end="url(#${red ? 'arrow-drop' : 'arrow'})"`}>` +
        (big ? '</path>' : `<title>${esc(edgeTitle(e))}</title></path>`),
    );
    if (labels) {
      const key = e.from + '|' + e.to;
      const k = pairs.get(key) || 0;
      pairs.set(key, k + 1);
      const lines = edgeLabel(e);
      const y0 = p.my - 6 - (lines.length - 1) * 12 + k * 13 * lines.length;
      const tspans = lines
        .map((l, i) => `<tspan x="${p.mx}" y="${y0 + i * 12}">${esc(l)}</tspan>`)
        .join('');
      texts.push(`<text class="elabel ${e.verdict}" text-anchor="middle">${tspans}</text>`);
    }
  }
  parts.push('</g>', big ? '<g class="boxes" text-rendering="optimizeSpeed">' : '<g class="boxes">');
  for (const n of g.nodes) {
    const title = big ? '' : [
      n.id,
      n.identities.length ? 'identities ' + n.identities.join(', ') : '',
      n.pods.length ? 'pods ' + n.pods.join(', ') + (n.podCount > n.pods.length ? ', …' : '') : '',
      n.labels.join(', '),
    ].filter(Boolean).join('\n');
    parts.push(
      `<g class="box ${n.kind}${n.id === selected ? ' selected' : ''}" data-id="${esc(n.id)}" data-kind="${n.kind}" transform="translate(${n.x},${n.y})">` +
        `<rect width="${n.w}" height="${n.h}"/>` +
        (far
          ? ''
          : `<text class="name" x="10" y="23">${esc(trunc(n.name, 24))}</text>` +
            `<text class="meta" x="10" y="43">${esc(trunc(boxMeta(n), 30))}</text>`) +
        (big ? '</g>' : `<title>${esc(title)}</title></g>`),
    );
  }
  // Labels last: over the boxes rather than hidden by them.
  parts.push('</g>', ...texts);
  if (!g.nodes.length) {
    const filtered = [...filterQuery()].length > 0;
    parts.push(`<text class="empty" x="0" y="40">${filtered ? 'No flows match these filters (yet).' : 'No flows yet: waiting for traffic.'}</text>`);
  }
  map.innerHTML = parts.join('');
  map.classList.toggle('big', big);
  map.classList.toggle('far', far);
  map.setAttribute('viewBox', `${view.x} ${view.y} ${view.w} ${view.h}`);
  map.dataset.nodes = String(g.nodes.length);
  map.dataset.edges = String(g.edges.length);
  map.dataset.dropped = String(dropped);
  map.dataset.rendered = String(Number(map.dataset.rendered || 0) + 1);
}

function renderTable(flows) {
  const rows = flows.map(
    (f) =>
      `<tr class="${esc(f.verdict)}"><td>${esc(f.time)}</td><td>${esc(f.node)}</td><td>${esc(f.source)}</td>` +
      `<td>${f.isReply ? '← ' : ''}${esc(f.destination)}</td><td>${esc(f.verdict)}${f.dropReason ? ' (' + esc(f.dropReason) + ')' : ''}</td>` +
      `<td>${esc(f.summary)}</td></tr>`,
  );
  $('#flows tbody').innerHTML = rows.join('');
}

function renderStatus(s, g) {
  const src = $('#source');
  src.className = 'source ' + s.state;
  src.textContent = `${s.source}: ${s.state}`;
  $('#counts').textContent =
    `${g.nodes.length} boxes · ${g.edges.length} connections · ${g.flows} flows (${s.received} received${s.lost ? ', ' + s.lost + ' lost' : ''})`;
  errors.source = s.state === 'error' ? `Flow source: ${s.error} (retrying; the map shows the last flows received)` : null;
}

function renderDetails() {
  const aside = $('#details');
  const n = last && selected && last.graph.nodes.find((x) => x.id === selected);
  if (!n) {
    aside.hidden = true;
    return;
  }
  const conns = last.graph.edges.filter((e) => e.from === n.id || e.to === n.id);
  aside.innerHTML =
    `<h2>${esc(n.name)}</h2><div>${esc(n.kind)}${n.namespace ? ' in ' + esc(n.namespace) : ''}</div>` +
    (n.identities.length ? `<div>identities: ${esc(n.identities.join(', '))}</div>` : '') +
    (n.pods.length ? `<div>pods (${n.podCount}): ${esc(n.pods.join(', '))}</div>` : '') +
    (n.labels.length ? `<div>labels: ${esc(n.labels.join(', '))}</div>` : '') +
    `<ul>${conns.map((e) => `<li class="${e.verdict}">${esc(edgeTitle(e)).replace(/\n/g, '<br>')}</li>`).join('')}</ul>` +
    (n.kind === 'workload' ? `<button type="button" id="only">Only its flows</button> ` : '') +
    `<button type="button" id="close">Close</button>`;
  aside.hidden = false;
  $('#close').onclick = () => {
    selected = null;
    renderDetails();
  };
  const only = $('#only');
  if (only) {
    only.onclick = () => navigate(new URLSearchParams({ pod: `${n.namespace}/${n.name}` }));
  }
}

function render(snap) {
  last = snap;
  renderStatus(snap.status, snap.graph);
  renderMap(snap.graph);
  // One console line whenever the map's shape changes: what a headless test or a curious user
  // watching the console sees of live updates.
  const shape = `${map.dataset.nodes} boxes, ${map.dataset.edges} connections, ${map.dataset.dropped} with drops`;
  if (shape !== told) {
    told = shape;
    console.info(`ciliate-ui map: ${shape}`);
  }
  renderTable(snap.flows);
  renderDetails();
  showErrors();
  if (!painted) {
    painted = true;
    const drawn = performance.now();
    // After the browser has painted this frame: the first paint, for people and the bench.
    requestAnimationFrame(() =>
      setTimeout(() => {
        const ms = performance.now().toFixed(1);
        const nav = performance.getEntriesByType('navigation')[0];
        const dcl = nav ? nav.domContentLoadedEventEnd.toFixed(0) : '?';
        document.body.dataset.firstPaintMs = ms;
        console.info(
          `ciliate-ui first paint ${ms} ms, ${snap.graph.nodes.length} boxes, ${snap.graph.edges.length} connections ` +
            `(page loaded ${dcl} ms, snapshot fetched ${fetched.toFixed(0)} ms, drawn ${drawn.toFixed(0)} ms)`,
        );
      }, 0),
    );
  }
}

// ---- data ----

function stop() {
  if (stream) stream.close();
  stream = null;
  clearTimeout(retry);
}

async function load() {
  stop();
  const q = filterQuery();
  let resp, body;
  try {
    resp = await fetch('api/snapshot?' + q);
    body = await resp.json();
    if (!fetched) fetched = performance.now();
  } catch (e) {
    errors.server = `The UI server cannot be reached (${e.message}); retrying…`;
    showErrors();
    retry = setTimeout(load, 3000);
    return;
  }
  errors.server = null;
  if (!resp.ok) {
    errors.filter = body && body.error ? body.error : `${resp.status} ${resp.statusText}`;
    showErrors();
    document.body.dataset.filterError = errors.filter;
    return;
  }
  errors.filter = null;
  delete document.body.dataset.filterError;
  render(body);
  if (pageQuery().get('live') !== '0') follow(q);
}

function follow(q) {
  stream = new EventSource('api/events?' + q);
  stream.addEventListener('snapshot', (ev) => {
    errors.server = null;
    render(JSON.parse(ev.data));
  });
  stream.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    errors.server = 'Lost the live connection to the UI server; reconnecting…';
    showErrors();
    $('#source').className = 'source lost';
  };
}

function navigate(q) {
  history.pushState(null, '', '?' + q);
  queryToForm(filterQuery());
  load();
}

// ---- interaction ----

form.addEventListener('submit', (e) => {
  e.preventDefault();
  navigate(formToQuery());
});
$('#clear').onclick = () => navigate(new URLSearchParams());
window.addEventListener('popstate', () => {
  queryToForm(filterQuery());
  load();
});

function svgPoint(ev) {
  const pt = map.createSVGPoint();
  pt.x = ev.clientX;
  pt.y = ev.clientY;
  return pt.matrixTransform(map.getScreenCTM().inverse());
}

map.addEventListener(
  'wheel',
  (ev) => {
    if (!view) return;
    ev.preventDefault();
    const p = svgPoint(ev);
    const f = ev.deltaY < 0 ? 0.85 : 1 / 0.85;
    view = { x: p.x - (p.x - view.x) * f, y: p.y - (p.y - view.y) * f, w: view.w * f, h: view.h * f };
    userMoved = true;
    applyView();
  },
  { passive: false },
);

let drag = null;
map.addEventListener('pointerdown', (ev) => {
  const box = ev.target.closest('.box');
  if (box) {
    selected = box.dataset.id;
    for (const b of map.querySelectorAll('.box.selected')) b.classList.remove('selected');
    box.classList.add('selected');
    renderDetails();
    return;
  }
  drag = { p: svgPoint(ev) };
  map.setPointerCapture(ev.pointerId);
});
map.addEventListener('pointermove', (ev) => {
  if (!drag || !view) return;
  const p = svgPoint(ev);
  view = { ...view, x: view.x - (p.x - drag.p.x), y: view.y - (p.y - drag.p.y) };
  userMoved = true;
  applyView();
});
map.addEventListener('pointerup', () => {
  drag = null;
});
map.addEventListener('dblclick', () => {
  userMoved = false;
  if (last) fit(last.graph);
  applyView();
});

queryToForm(filterQuery());
load();
