// tether live view: plain ES module, no build step. Every text reaches the page via
// textContent (never innerHTML), so session titles and messages cannot inject markup.
const STATES = ["working", "idle", "detached", "orphaned", "external"];
const COLORS = ["#2b7de9", "#2f9e44", "#e8a317", "#d9480f", "#7048e8", "#0ca678",
  "#c2255c", "#5c7cfa", "#868e96", "#f76707", "#37b24d", "#1098ad"];
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function api(path) {
  const r = await fetch("/api/v1/" + path, { credentials: "same-origin" });
  if (r.status === 401) { const err = new Error("login"); err.login = true; throw err; }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

const ago = (iso) => {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? `${s.toFixed(0)}s ago` : s < 5400 ? `${(s / 60).toFixed(0)}m ago` : `${(s / 3600).toFixed(1)}h ago`;
};

function countTable(table, data) {
  const head = table.tHead, body = table.tBodies[0];
  head.replaceChildren(el("tr", {}, el("th", { text: "" }),
    ...STATES.map((s) => el("th", { class: "num", text: s }))));
  body.replaceChildren(...Object.entries(data).map(([k, c]) => el("tr", {},
    el("td", { text: k }), ...STATES.map((s) => el("td", { class: "num", text: String(c[s] || 0) })))));
}

function renderLive(live) {
  const c = live.counts;
  $("footer-count").textContent =
    `${c.open} open · ${c.active} active · ` + STATES.map((s) => `${c.by_state[s] || 0} ${s}`).join(" · ");
  $("state-counts").replaceChildren(...STATES.map((s) =>
    el("span", { class: `chip st-${s}`, "data-state": s }, s, el("b", { text: String(c.by_state[s] || 0) }))));
  countTable($("by-source"), c.by_source);
  countTable($("by-host"), c.by_host);
  const groups = STATES.map((state) => {
    const rows = live.sessions.filter((r) => r.state === state);
    const total = c.by_state[state] || 0;
    if (!rows.length && !total) return null;
    const tbody = el("tbody", {}, ...rows.map((r) => el("tr", { "data-session": r.id, "data-state": r.state },
      el("td", {}, el("a", { class: "sid", text: r.id.slice(0, 12), title: r.id, onclick: () => openTranscript(r.id) })),
      el("td", { text: r.source }),
      el("td", { text: r.title || "" }),
      el("td", { text: r.owner ? `${r.owner.kind} ${r.owner.pid} @ ${r.owner.host}` : "—" }),
      el("td", { class: "why", text: r.why }))));
    // The counts are exact; the rows are the oldest page (the API pages with a cursor).
    const more = total > rows.length ? el("p", { class: "why", text: `and ${total - rows.length} more` }) : "";
    return el("div", { class: "group", id: `group-${state}` },
      el("h3", {}, el("span", { class: `chip st-${state}`, text: state }), `${total}`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["id", "source", "title", "owner", "why"].map((h) => el("th", { text: h })))), tbody),
      more);
  }).filter(Boolean);
  $("groups").replaceChildren(...(groups.length ? groups : [el("p", { class: "why", text: "no open sessions" })]));
}

function renderCensus(c) {
  $("census-totals").replaceChildren(...[["sessions", c.total], ["open", c.open], ["ended", c.ended],
    ["ghosts", c.ghosts], ["live owner", c.open_live_owner], ["dead owner", c.open_dead_owner]]
    .map(([k, v]) => el("span", { class: "chip" }, k, el("b", { text: String(v) }))));
  const reasons = [...new Set(Object.values(c.by_source).flatMap((s) => Object.keys(s.end_reasons)))];
  const color = Object.fromEntries(reasons.map((r, i) => [r, COLORS[i % COLORS.length]]));
  const max = Math.max(1, ...Object.values(c.by_source).map((s) => s.ended));
  const rows = Object.entries(c.by_source).map(([source, s]) => {
    const bar = el("div", { class: "bar", title: `${source}: ${s.ended} ended` });
    for (const [reason, n] of Object.entries(s.end_reasons)) {
      const seg = el("div", { class: "seg", title: `${reason}: ${n}`, "data-reason": reason });
      seg.style.width = `${(100 * n) / max}%`;  // CSSOM, allowed by the page's CSP
      seg.style.background = color[reason];
      bar.append(seg);
    }
    return el("div", { class: "row" }, el("span", { text: source }), bar, el("span", { class: "num", text: String(s.ended) }));
  });
  const legend = el("div", { class: "legend" }, ...reasons.map((r) => {
    const sw = el("span", { class: "sw" }); sw.style.background = color[r];
    return el("span", {}, sw, r);
  }));
  $("reasons-chart").replaceChildren(...rows, legend);
}

function addFeed(ev) {
  const t = new Date(ev.at * 1000).toLocaleTimeString();
  const extra = ev.data && (ev.data.reason || ev.data.source || ev.data.status || "");
  const li = el("li", { "data-kind": ev.kind }, el("time", { text: t }), el("span", { class: "kind", text: ev.kind }),
    el("a", { class: "sid", text: (ev.session_id || "").slice(0, 12), onclick: () => ev.session_id && openTranscript(ev.session_id) }),
    extra ? ` ${extra}` : "");
  const feed = $("feed");
  feed.prepend(li);
  while (feed.children.length > 100) feed.lastChild.remove();
}

async function openTranscript(id) {
  const t = await api(`sessions/${encodeURIComponent(id)}?limit=500`);
  const s = t.session;
  $("transcript").hidden = false;
  $("t-head").replaceChildren(el("p", {},
    el("b", { text: s.title || s.id }), ` · ${s.source} · ${s.message_count} messages · `,
    s.ended_at ? `ended (${s.end_reason})` : "open"));
  $("t-chain").replaceChildren(...t.chain.map((c) => el("li", { class: c.id === s.id ? "current" : "" },
    el("a", { class: "sid", text: c.id.slice(0, 12), onclick: () => openTranscript(c.id) }),
    ` ${c.title || ""} (${c.message_count} msgs${c.ended_at ? ", " + c.end_reason : ", open"})`)));
  $("t-messages").replaceChildren(...t.messages.map((m) => {
    const li = el("li", { "data-role": m.role }, el("span", { class: "role", text: m.role }));
    if (m.content) li.append(m.content);
    for (const call of m.tool_calls || []) {
      const f = call.function || call;
      li.append(el("div", { class: "tool", text: `→ ${f.name || "tool"}(${typeof f.arguments === "string" ? f.arguments : JSON.stringify(f.arguments || {})})` }));
    }
    if (m.tool_name) li.append(el("div", { class: "tool", text: `← ${m.tool_name}` }));
    return li;
  }));
  $("transcript").scrollIntoView({ block: "start" });
}

let pending = null;
// The census counts every session (O(all)): read on events and every 10 s, not every 1.5 s.
let censusDue = true;
async function refresh() {
  pending = null;
  const withCensus = censusDue;
  censusDue = false;
  try {
    const [live, census] = await Promise.all([api("live?limit=200"), withCensus ? api("census") : null]);
    renderLive(live);
    if (census) renderCensus(census);
    document.body.dataset.updated = String(Date.now());
    // Milliseconds from navigation to the first data drawn (read by bench/web.py).
    document.body.dataset.firstDrawMs ??= String(Math.round(performance.now()));
  } catch (e) {
    if (e.login) { $("login").hidden = false; $("main").hidden = true; return; }
    $("conn").textContent = `error: ${e.message}`;
  }
}
const soon = (census = false) => {
  censusDue ||= census;
  if (!pending) pending = setTimeout(refresh, 100);
};

async function loadFeed() {
  const recent = await api("events?after=0&limit=1");
  const after = Math.max(0, recent.newest_id - 30);
  const back = await api(`events?after=${after}&limit=30`);
  back.events.forEach(addFeed);
  return back.last_id;
}

async function start() {
  $("close-transcript").addEventListener("click", () => { $("transcript").hidden = true; });
  $("main").hidden = false;
  // The sessions, the census and the recent feed load side by side.
  const [, feed] = await Promise.allSettled([refresh(), loadFeed()]);
  if (feed.status === "rejected" && feed.reason.login) return;
  // Follow on from the last event shown: nothing falls between the two.
  const from = feed.status === "fulfilled" ? `?after=${feed.value}` : "";
  const es = new EventSource(`/api/v1/events/stream${from}`);
  es.onopen = () => { $("conn").textContent = "live"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; };
  es.onmessage = (m) => { addFeed(JSON.parse(m.data)); soon(true); };
  es.addEventListener("reload", () => { $("feed").replaceChildren(); soon(true); });
  // Heartbeat ages, "why" lines and dead owners (a SIGKILL writes no event) move
  // with time, not only with events: within 2 s, as events do.
  setInterval(() => soon(false), 1500);
  // The census's owner liveness changes without events too (a SIGKILL): now and then.
  setInterval(() => soon(true), 10000);
}
start();
