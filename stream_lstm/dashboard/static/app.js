// stream-lstm dashboard: polls /api/keys and /api/series every second and draws one uPlot chart
// per key: actuals, the 1-step-ahead forecast trail, the latest forecast and its interval band.
// Once data is drawn, document.body.dataset.points holds the number of points drawn (a marker
// for tests) and #status says what is shown.
"use strict";

(function () {
  const POLL_MS = 1000;
  const HEIGHT = 300;
  const root = document.getElementById("charts");
  const statusEl = document.getElementById("status");
  const cards = new Map(); // key -> {card, meta, body, plot}

  const COLORS = {
    actual: "#1f2933",
    oneStep: "#e8590c",
    latest: "#c92a2a",
    edge: "rgba(201, 42, 42, 0.45)",
    band: "rgba(201, 42, 42, 0.13)",
  };

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  // The series of one key on a shared x axis (seconds), with nulls where a series has no point.
  function align(s) {
    const latest = s.latest;
    const xsMs = new Set(s.actual.ts.concat(s.one_step.ts, latest ? latest.h_ts : []));
    const xs = Array.from(xsMs).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const empty = () => new Array(xs.length).fill(null);
    const cols = { actual: empty(), oneStep: empty(), latest: empty(), lower: empty(), upper: empty() };
    const put = (col, ts, vs) => ts.forEach((t, i) => { col[at.get(t)] = vs[i]; });
    put(cols.actual, s.actual.ts, s.actual.value);
    put(cols.oneStep, s.one_step.ts, s.one_step.value);
    if (latest) {
      put(cols.latest, latest.h_ts, latest.value);
      if (latest.lower && latest.upper) {
        put(cols.lower, latest.h_ts, latest.lower);
        put(cols.upper, latest.h_ts, latest.upper);
      }
    }
    const data = [xs.map((x) => x / 1000), cols.actual, cols.oneStep, cols.latest, cols.lower, cols.upper];
    let points = 0;
    for (let i = 1; i < data.length; i++) {
      for (const v of data[i]) if (v !== null && v !== undefined) points++;
    }
    return { data, points };
  }

  function card(key) {
    let c = cards.get(key);
    if (c) return c;
    const el = document.createElement("section");
    el.className = "card";
    el.dataset.key = key;
    const h = document.createElement("h2");
    h.textContent = key;
    const meta = document.createElement("div");
    meta.className = "meta";
    const body = document.createElement("div");
    body.innerHTML = '<div class="empty">waiting for data…</div>';
    el.append(h, meta, body);
    root.append(el);
    c = { el, meta, body, plot: null };
    cards.set(key, c);
    return c;
  }

  function width(c) {
    return Math.max(300, c.el.clientWidth - 20);
  }

  function makePlot(c, s, data) {
    const opts = {
      width: width(c),
      height: HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { x: { time: true } },
      series: [
        { label: "time (UTC)" },
        { label: "actual", stroke: COLORS.actual, width: 1.5, spanGaps: true },
        { label: "1-step forecast", stroke: COLORS.oneStep, width: 1.2, dash: [5, 3], spanGaps: true },
        { label: "latest forecast", stroke: COLORS.latest, width: 2, spanGaps: true },
        { label: "lower", stroke: COLORS.edge, width: 1, spanGaps: true },
        { label: "upper", stroke: COLORS.edge, width: 1, spanGaps: true },
      ],
      bands: [{ series: [5, 4], fill: COLORS.band }],
      axes: [{}, { label: s.target || "", size: 60 }],
    };
    c.body.textContent = "";
    c.plot = new uPlot(opts, data, c.body);
  }

  function fmt(v) {
    return v === null || v === undefined ? "–" : Number(v).toPrecision(4);
  }

  function describe(s) {
    const parts = ["target " + (s.target || "(none yet)")];
    const l = s.latest;
    if (l) {
      parts.push("model " + l.model);
      parts.push("horizon " + l.value.length + " × " + (l.interval || l.interval_ms / 1000 + " s"));
      parts.push("latest from " + new Date(l.ts).toISOString().replace(".000Z", "Z"));
      if (l.levels) parts.push("interval q" + l.levels[0] + "–q" + l.levels[1]);
    }
    if (s.one_step_mae !== null && s.one_step_mae !== undefined) {
      parts.push("1-step MAE " + fmt(s.one_step_mae) + " (" + s.one_step_matched + " pts)");
    }
    return parts.join(" · ");
  }

  // Draws one key; returns the number of points drawn.
  function draw(s) {
    const c = card(s.key);
    c.meta.textContent = describe(s);
    const { data, points } = align(s);
    if (points === 0) return 0;
    if (c.plot === null) makePlot(c, s, data);
    else c.plot.setData(data);
    return points;
  }

  async function tick() {
    try {
      const ov = await getJSON("/api/keys");
      const all = await Promise.all(
        ov.keys.map((k) => getJSON("/api/series?key=" + encodeURIComponent(k)))
      );
      let points = 0;
      for (const s of all) points += draw(s);
      const counts = ov.counts;
      const what = ov.keys.length
        ? ov.keys.length + " key(s), target " + (ov.target || "(waiting for forecasts)")
        : "waiting for events";
      const msg =
        what + " · " + points + " points drawn · " + counts.actuals + " events, " +
        counts.forecasts + " forecasts read" + (counts.bad ? ", " + counts.bad + " unreadable" : "") +
        " · " + new Date().toISOString().slice(11, 19) + " UTC";
      statusEl.textContent = msg;
      statusEl.dataset.state = points > 0 ? "data" : "waiting";
      document.body.dataset.points = String(points);
    } catch (e) {
      statusEl.textContent = "cannot read the dashboard API: " + e.message;
      statusEl.dataset.state = "error";
    } finally {
      setTimeout(tick, POLL_MS);
    }
  }

  window.addEventListener("resize", () => {
    for (const c of cards.values()) if (c.plot) c.plot.setSize({ width: width(c), height: HEIGHT });
  });

  tick();
})();
