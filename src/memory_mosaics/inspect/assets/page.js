// Memory explorer: renders the JSON embedded in <script id="data"> (written by memory_mosaics.inspect).
// Plain JavaScript, no library, no network. Language mode: tokens coloured by loss; hover or click a
// token to see, for the chosen layer / memory / head, the positions it retrieved from (arcs), the
// P-mem slots it used, the predicted tokens and the logit lens. Moons mode: retrieval maps and
// heads-by-moon shares.
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const kid of kids) e.append(kid);
  return e;
};
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(d));
const MARKED = 0.01;  // smallest weight marked in the text (outline and arc)
const show = (s) => String(s).replace(/\n/g, "\\n").replace(/\t/g, "\\t");  // newlines and tabs visible

function table(headers, rows) {
  const t = el("table");
  t.append(el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h[0], class: h[1] || "" })))));
  const body = el("tbody");
  rows.forEach((r) => body.append(r));
  t.append(body);
  return t;
}

function cell(content, cls) {
  const td = el("td", { class: cls || "" });
  if (content instanceof Node) td.append(content); else td.textContent = content;
  return td;
}

function bar(w) { return el("span", { class: "bar", style: `width:${Math.max(1, Math.round(80 * w))}px` }); }

// ------------------------------------------------------------------------------------------ language
function languagePage() {
  const T = DATA.tokens.length;
  const state = { layer: 0, memory: 0, head: 0, pinned: null, shown: null };
  const layerSel = $("layer"), memSel = $("memory"), headSel = $("head");
  DATA.layers.forEach((_, i) => layerSel.append(el("option", { value: i, text: `layer ${i}` })));

  function contextualMemories(l) { return DATA.layers[l].memories.filter((m) => m.kind !== "persistent"); }
  function fillMemories() {
    memSel.textContent = "";
    contextualMemories(state.layer).forEach((m, i) => memSel.append(el("option", { value: i, text: m.name })));
    state.memory = Math.min(state.memory, memSel.options.length - 1);
    memSel.value = state.memory;
    fillHeads();
  }
  function fillHeads() {
    headSel.textContent = "";
    const m = contextualMemories(state.layer)[state.memory];
    for (let h = 0; h < m.heads.length; h++) headSel.append(el("option", { value: h, text: `head ${h}` }));
    state.head = Math.min(state.head, m.heads.length - 1);
    headSel.value = state.head;
  }

  // tokens coloured by loss (red = surprising)
  const maxLoss = Math.max(1e-6, ...DATA.loss.filter((x) => x !== null));
  const text = $("text");
  const spans = DATA.tokens.map((tok, i) => {
    const loss = i > 0 ? DATA.loss[i - 1] : null;  // the loss of predicting token i
    const s = el("span", { class: "tok", id: `tok-${i}`, "data-i": i, text: tok });
    if (loss !== null) s.style.background = `rgba(230, 60, 40, ${(0.65 * loss / maxLoss).toFixed(3)})`;
    s.title = `#${i} ${show(tok)}` + (loss !== null ? ` loss ${fmt(loss)}` : "");
    text.append(s);
    return s;
  });

  function sources(mem, head, t) {
    const k = mem.k, src = mem.src[head], w = mem.w[head], out = [];
    for (let j = 0; j < k; j++) if (src[t * k + j] >= 0) out.push([src[t * k + j], w[t * k + j]]);
    return out;
  }

  function drawArcs(t, srcs) {
    const svg = $("arcs"), box = $("textwrap").getBoundingClientRect();
    svg.textContent = "";
    const centre = (i) => {
      const r = spans[i].getBoundingClientRect();
      return [r.left + r.width / 2 - box.left, r.top - box.top];
    };
    const [x2, y2] = centre(t);
    for (const [s, w] of srcs) {
      if (w < MARKED) continue;
      const [x1, y1] = centre(s);
      const lift = 18 + Math.min(60, Math.abs(x2 - x1) / 6 + Math.abs(y2 - y1) / 3);
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("d", `M${x1},${y1} Q${(x1 + x2) / 2},${Math.min(y1, y2) - lift} ${x2},${y2}`);
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", "#26c");
      path.setAttribute("stroke-opacity", (0.25 + 0.75 * w).toFixed(2));
      path.setAttribute("stroke-width", (1 + 5 * w).toFixed(2));
      path.setAttribute("class", "arc");
      path.setAttribute("data-src", s);
      svg.append(path);
    }
  }

  function clearMarks() {
    document.querySelectorAll(".tok.src, .tok.query").forEach((s) => {
      s.classList.remove("src", "query");
      s.style.boxShadow = "";
    });
  }

  function render(t) {
    state.shown = t;
    clearMarks();
    const layer = DATA.layers[state.layer];
    const mem = contextualMemories(state.layer)[state.memory];
    const srcs = sources(mem, state.head, t);
    spans[t].classList.add("query");
    for (const [s, w] of srcs) {
      if (w < MARKED) continue;  // listed in the panel, not marked in the text
      spans[s].classList.add("src");
      spans[s].style.boxShadow = `inset 0 -${Math.max(2, Math.round(10 * w))}px 0 rgba(34, 102, 204, 0.8)`;
    }
    drawArcs(t, srcs);
    $("selected").textContent = `token #${t} ${show(DATA.tokens[t])}` +
      (t > 0 ? `, loss ${fmt(DATA.loss[t - 1])}` : "") + (t + 1 < T ? `, next ${show(DATA.tokens[t + 1])}` : "");

    // retrieval panel: which stored pairs the query read, and the token each pair stores
    const off = mem.token_offset;
    const rows = srcs.map(([s, w]) => el("tr", { "data-src": s, "data-weight": w },
      cell(String(s), "num"), cell(el("code", { class: "t", text: show(DATA.tokens[s]) })),
      cell(el("code", { class: "t", text: s + off < T ? show(DATA.tokens[s + off]) : "" })),
      cell(fmt(w), "num"), cell(bar(w))));
    const r = $("retrieval");
    r.textContent = "";
    r.append(el("h3", { text: `Retrieved from (layer ${state.layer}, ${mem.name}, head ${state.head})` }));
    const kept = srcs.reduce((a, [, w]) => a + w, 0);
    r.append(el("div", { class: "hint", text: (off ? "a pair at s stores the value of token s+1 (the peek)" :
      "attention: the value at s is token s") + `; the ${srcs.length} pairs listed hold ${fmt(100 * kept, 1)}% ` +
      "of the weight" }));
    const perToken = Object.entries(mem.per_token || {});  // v2: gate g_t, decay lambda_t, adaptive beta_t
    if (perToken.length) r.append(el("div", { class: "hint per-token", text: "at this token: " +
      perToken.map(([name, v]) => `${name} ${fmt(v[state.head][t])}`).join(", ") }));
    if (rows.length) r.append(table([["pos", "num"], ["token"], ["stores"], ["weight", "num"], [""]], rows));
    else r.append(el("div", { class: "hint", text: "no stored pair is readable from this position" }));

    // P-mem slots of the same layer and head
    const p = $("pmem");
    p.textContent = "";
    const pm = layer.memories.find((m) => m.kind === "persistent");
    p.style.display = pm ? "" : "none";  // v2's SwiGLU and GPT's MLP have no slots
    if (pm && state.head < pm.heads.length) {
      const ph = pm.heads[state.head];
      p.append(el("h3", { text: `P-mem slots (layer ${state.layer}, head ${state.head})` }));
      p.append(el("div", { class: "hint", text: `beta ${fmt(ph.beta)}, alpha ${fmt(ph.alpha)}` +
        (ph.decay !== undefined ? `, decay ${fmt(ph.decay)}` : "") +
        `; ${fmt(ph.effective_pairs, 1)} slots read effectively (mean over the text)` }));
      p.append(table([["slot", "num"], ["weight", "num"], [""]], sources(pm, state.head, t).map(([s, w]) =>
        el("tr", { "data-slot": s }, cell(String(s), "num"), cell(fmt(w), "num"), cell(bar(w))))));
    }

    // the model's own prediction (last layer's lens) and the lens across layers
    const last = DATA.layers[DATA.layers.length - 1].lens;
    const pr = $("predictions");
    pr.textContent = "";
    pr.append(el("h3", { text: "Predicted next token" }));
    pr.append(table([["token"], ["p", "num"], [""]], last.ids[t].map((id, j) =>
      el("tr", {}, cell(el("code", { class: "t", text: show(DATA.vocab[id]) })), cell(fmt(last.p[t][j]), "num"),
        cell(bar(last.p[t][j]))))));
    const lens = $("lens");
    lens.textContent = "";
    lens.append(el("h3", { text: "Logit lens after each block" }));
    const branches = Object.keys(DATA.layers[0].norms).filter((n) => n !== "stream");  // residual branches
    lens.append(el("div", { class: "hint", text: "|branch|: norm of what each residual branch adds at this token" }));
    lens.append(table([["layer"], ["top tokens"], ["p(next)", "num"], ...branches.map((n) => [`|${n}|`, "num"])],
      DATA.layers.map((L, l) => el("tr", {}, cell(String(l)),
        cell(L.lens.ids[t].slice(0, 3).map((id, j) => `${show(DATA.vocab[id])} ${fmt(L.lens.p[t][j], 2)}`).join("  ")),
        cell(t + 1 < T ? fmt(Math.exp(L.lens.target_logp[t])) : "-", "num"),
        ...branches.map((n) => cell(fmt(L.norms[n][t], 2), "num"))))));
  }

  function select(t) { state.pinned = t; render(t); }
  spans.forEach((s, i) => {
    s.addEventListener("mouseenter", () => render(i));
    s.addEventListener("click", () => select(i));
  });
  $("text").addEventListener("mouseleave", () => { if (state.pinned !== null) render(state.pinned); });
  document.addEventListener("keydown", (e) => {
    if (state.pinned === null) return;
    if (e.key === "ArrowRight" && state.pinned + 1 < T) select(state.pinned + 1);
    if (e.key === "ArrowLeft" && state.pinned > 0) select(state.pinned - 1);
  });
  window.addEventListener("resize", () => { if (state.shown !== null) render(state.shown); });
  const rerender = () => { markHead(); if (state.shown !== null) render(state.shown); };
  layerSel.addEventListener("change", () => { state.layer = +layerSel.value; fillMemories(); rerender(); });
  memSel.addEventListener("change", () => { state.memory = +memSel.value; fillHeads(); rerender(); });
  headSel.addEventListener("change", () => { state.head = +headSel.value; rerender(); });

  // heads overview: one row per (layer, memory, head); a click chooses that head
  const cols = ["beta", "decay", "gate", "gamma", "alpha"].filter((c) =>  // the parameters these models have
    DATA.layers.some((_, l) => contextualMemories(l).some((m) => m.heads.some((h) => h[c] !== undefined && h[c] !== null))));
  const rows = [];
  DATA.layers.forEach((L, l) => contextualMemories(l).forEach((m, mi) => m.heads.forEach((h, hi) => {
    const tr = el("tr", { "data-layer": l, "data-memory": mi, "data-head": hi },
      cell(String(l)), cell(m.name), cell(String(hi)), ...cols.map((c) => cell(fmt(h[c]), "num")),
      cell(fmt(h.effective_pairs, 1), "num"), cell(fmt(h.distance, 1), "num"), cell(fmt(h.copy), "num"));
    tr.addEventListener("click", () => {
      state.layer = l; layerSel.value = l; fillMemories();
      state.memory = mi; memSel.value = mi; fillHeads();
      state.head = hi; headSel.value = hi; rerender();
    });
    rows.push(tr);
  })));
  $("heads").append(el("h3", { text: "Heads overview" }),
    el("div", { class: "hint", text: "beta: bandwidth (at the last query); decay: leaky-average lambda; gate: v2 " +
      "gate g (mean); gamma: peek; alpha: value scale; eff. pairs: exp(entropy) of the weights, mean over " +
      "queries; distance: mean retrieval lag; copy: how often the most-weighted pair stores the predicted token" }),
    table([["layer"], ["memory"], ["head"], ...cols.map((c) => [c, "num"]), ["eff. pairs", "num"],
      ["distance", "num"], ["copy", "num"]], rows));
  function markHead() {
    rows.forEach((tr) => tr.classList.toggle("sel", +tr.dataset.layer === state.layer &&
      +tr.dataset.memory === state.memory && +tr.dataset.head === state.head));
  }
  const first = DATA.initial || {};
  state.layer = Math.max(0, Math.min(DATA.layers.length - 1, first.layer || 0));
  layerSel.value = state.layer;
  state.head = first.head || 0;
  fillMemories();
  markHead();
  select(Math.max(0, Math.min(T - 1, first.token !== undefined ? first.token : T - 1)));
}

// ------------------------------------------------------------------------------------------ moons
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function viridis(x) {
  const f = Math.max(0, Math.min(1, x)) * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(f));
  const a = VIRIDIS[i], b = VIRIDIS[i + 1], u = f - i;
  return a.map((c, j) => Math.round(c + (b[j] - c) * u));
}

function moonsPage() {
  const root = $("moons");
  const T = DATA.x.length, MOON = ["#1f77b4", "#ff7f0e", "#2ca02c"];
  const traj = el("canvas", { width: 900, height: 220, id: "trajectory" });
  const info = el("div", { id: "selected", class: "hint", text: "hover a retrieval map: a row is a query t" });
  const drawTrajectory = (t, marks) => {
    const g = traj.getContext("2d"), W = traj.width, H = traj.height, X = (i) => (i / (T - 1)) * (W - 20) + 10;
    g.clearRect(0, 0, W, H);
    for (let m = 0; m < 3; m++) {
      g.strokeStyle = MOON[m];
      g.beginPath();
      DATA.x.forEach((row, i) => { const y = H / 2 - row[2 * m] * (H / 2 - 10) / 1.1; i ? g.lineTo(X(i), y) : g.moveTo(X(i), y); });
      g.stroke();
    }
    g.strokeStyle = "#aaa";
    g.setLineDash([2, 3]);
    DATA.periods_steps.forEach((p) => { g.beginPath(); g.moveTo(X(p), 0); g.lineTo(X(p), H); g.stroke(); });
    g.setLineDash([]);
    if (t === null) return;
    g.fillStyle = "#d33";
    g.fillRect(X(t) - 1, 0, 2, H);
    for (const [s, w] of marks) { g.fillStyle = `rgba(34,102,204,${0.3 + 0.7 * w})`; g.fillRect(X(s) - 1, 0, 3, H); }
  };
  root.append(el("section", {}, el("h3", { text: "Trajectory" }),
    el("div", { class: "hint", text: "real parts of the three moons over the window; red: the query; blue: " +
      "the positions it retrieves from (hovered map); grey: the moons' periods" }), traj, info));
  const maps = el("div", { class: "maps" }), shares = el("div", { class: "shares" });
  DATA.models.forEach((model) => {
    const rows = [];
    for (const part of ["key", "value"]) model.shares[part].forEach((row, h) => rows.push(el("tr", {},
      cell(`${part} W_${part === "key" ? "phi" : "psi"}`), cell(`head ${h}`), ...row.map((v) => {
        const td = cell(fmt(v, 2), "share"), c = viridis(v);
        td.style.background = `rgb(${c})`;
        td.style.color = v > 0.6 ? "#222" : "#fff";
        return td;
      }))));
    shares.append(el("div", { "data-model": model.name }, el("h3", { text: `${model.name}: disentanglement ` +
      fmt(model.disentanglement) }), table([["weights"], ["head"], ["moon 1"], ["moon 2"], ["moon 3"]], rows)));
    const mem = model.memory, k = mem.k;
    mem.src.forEach((src, h) => {
      const size = Math.min(300, T), c = el("canvas", { width: size, height: size, class: "retrieval-map",
        "data-model": model.name, "data-head": h });
      const g = c.getContext("2d"), img = g.createImageData(size, size), sc = size / T;
      for (let p = 0; p < img.data.length; p += 4) { img.data[p] = 68; img.data[p + 1] = 1; img.data[p + 2] = 84; img.data[p + 3] = 255; }
      for (let t = 0; t < T; t++) for (let j = 0; j < k; j++) {
        const s = src[t * k + j];
        if (s < 0) continue;
        const col = viridis(Math.sqrt(mem.w[h][t * k + j])), p = 4 * (Math.floor(t * sc) * size + Math.floor(s * sc));
        img.data[p] = col[0]; img.data[p + 1] = col[1]; img.data[p + 2] = col[2];
      }
      g.putImageData(img, 0, 0);
      g.strokeStyle = "rgba(255,60,60,0.8)";
      g.setLineDash([3, 3]);
      g.beginPath(); g.moveTo(0, DATA.combined_steps * sc); g.lineTo(size, DATA.combined_steps * sc); g.stroke();
      c.addEventListener("mousemove", (e) => {
        const r = c.getBoundingClientRect(), t = Math.min(T - 1, Math.floor(((e.clientY - r.top) / r.height) * T));
        const marks = [];
        for (let j = 0; j < k; j++) if (src[t * k + j] >= 0) marks.push([src[t * k + j], mem.w[h][t * k + j]]);
        info.textContent = `${model.name}, head ${h}, query t = ${t}: ` +
          marks.slice(0, 5).map(([s, w]) => `s=${s} (lag ${t - s}) w=${fmt(w, 2)}`).join(", ");
        drawTrajectory(t, marks);
      });
      maps.append(el("div", { class: "map" }, c, el("div", { text: `${model.name}, head ${h}` })));
    });
  });
  root.append(el("section", {}, el("h3", { text: "Retrieval maps" }), el("div", { class: "hint", text:
    "sqrt of the top-k retrieval weights; row: query t, column: stored pair s; red dashes: the combined period" }),
    maps));
  root.append(el("section", {}, el("h3", { text: "Heads by moon" }), el("div", { class: "hint", text:
    "share of each head's key and value weight energy read from each moon" }), shares));
  drawTrajectory(null, []);
}

window.addEventListener("DOMContentLoaded", () => {
  document.title = DATA.title;
  $("title").textContent = DATA.title;
  $("subtitle").textContent = DATA.subtitle || "";
  if (DATA.kind === "moons") moonsPage(); else languagePage();
  document.body.setAttribute("data-ready", "1");
});
