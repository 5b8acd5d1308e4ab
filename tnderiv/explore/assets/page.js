// tnderiv explore: renders a report (JSON) and, with the server, asks for new ones. Every name is set as text.
"use strict";
(function () {
  const MODE = document.body.dataset.mode;  // "server" or "static"
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let state = JSON.parse($("tnd-state").textContent);
  let selected = { candidate: null, step: 0 };
  let draft = null;   // the settings the controls show (may be invalid until the server accepts them)
  let requestNumber = 0, timer = null;

  // ----- small helpers -------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "title") node.title = v; else node.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function compact(n) {
    if (n === null || n === undefined) return "—";
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(2) + " G";
    if (a >= 1e6) return (n / 1e6).toFixed(2) + " M";
    if (a >= 1e4) return (n / 1e3).toFixed(1) + " k";
    return Math.round(n).toLocaleString("en-US");
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"]; let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[u];
  }
  function seconds(s) {
    if (s < 1e-3) return (s * 1e6).toFixed(1) + " µs";
    if (s < 1) return (s * 1e3).toFixed(2) + " ms";
    return s.toFixed(2) + " s";
  }
  function full(n) { return Number(n).toLocaleString("en-US"); }
  // an SVG from the server, parsed as XML (never as HTML) and stripped of anything active
  function importSvg(text) {
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    const root = doc.documentElement;
    if (!root || root.nodeName !== "svg") return el("div", { class: "note" }, "(the drawing could not be read)");
    root.querySelectorAll("script, foreignObject, iframe").forEach((n) => n.remove());
    root.querySelectorAll("*").forEach((n) => {
      for (const attr of Array.from(n.attributes)) {
        if (/^on/i.test(attr.name) || /href$/i.test(attr.name)) n.removeAttribute(attr.name);
      }
    });
    return document.importNode(root, true);
  }

  // ----- the spec text <-> controls ----------------------------------------------------------------
  function parseSpec(text) {
    const [kind, rest] = [text.split(":")[0].trim().toLowerCase(), text.includes(":") ? text.slice(text.indexOf(":") + 1) : ""];
    const params = {};
    for (const item of rest.split(",")) {
      const i = item.indexOf("=");
      if (i > 0) params[item.slice(0, i).trim()] = item.slice(i + 1).trim();
    }
    return { kind, params };
  }
  function specText(d) {
    const defaults = state.layer_kinds[d.kind] || {};
    const parts = [];
    for (const key of Object.keys(defaults)) {
      const v = (d.params[key] ?? "").trim();
      if (v !== "" && v.toLowerCase() !== String(defaults[key]).toLowerCase()) parts.push(key + "=" + v);
    }
    return parts.length ? d.kind + ":" + parts.join(",") : d.kind;
  }
  function draftFromState() {
    const s = state.settings;
    const d = { spec: s.spec, quantity: s.quantity, sizes: Object.assign({}, s.sizes), simplify: s.simplify, term: s.term };
    if (s.spec) Object.assign(d, parseSpec(s.spec));
    return d;
  }
  const CONV = /^conv(_transpose)?([123])d$/;

  let built = null;  // what the controls were built for: rebuilt only when that changes (typing keeps focus)
  function renderControls(force) {
    const d = draft;
    const signature = JSON.stringify([state.spec_editable, state.editable, d.kind, state.symbols, state.quantities, state.terms.length]);
    $("spec-text").textContent = state.spec_editable ? specText(d) : state.target;
    if (!force && signature === built) return;
    built = signature;
    const box = $("layer-controls"); clear(box);
    if (!state.spec_editable) {
      box.appendChild(el("p", { class: "note" }, state.editable
        ? "This layer has no spec spelling (custom layer): its hyperparameters are fixed."
        : "A diagram is its own quantity: no layer hyperparameters."));
    } else {
      const kindRow = el("label", { class: "row" }); kindRow.appendChild(el("span", {}, "layer"));
      const kinds = el("select", { id: "kind" });
      for (const k of Object.keys(state.layer_kinds)) kinds.appendChild(el("option", { value: k }, k));
      kinds.value = d.kind;
      kinds.addEventListener("change", () => { d.kind = kinds.value; d.params = {}; renderControls(true); changed(); });
      kindRow.appendChild(kinds); box.appendChild(kindRow);
      const conv = CONV.exec(d.kind);
      if (conv) {
        const dimsRow = el("label", { class: "row" }); dimsRow.appendChild(el("span", {}, "dims"));
        const dims = el("select", { id: "dims" });
        for (const n of ["1", "2", "3"]) dims.appendChild(el("option", { value: n }, n));
        dims.value = conv[2];
        dims.addEventListener("change", () => { d.kind = "conv" + (conv[1] || "") + dims.value + "d"; renderControls(true); changed(); });
        dimsRow.appendChild(dims); box.appendChild(dimsRow);
        const tr = el("label", { class: "row check" }); const cb = el("input", { type: "checkbox", id: "transposed" });
        cb.checked = Boolean(conv[1]);
        cb.addEventListener("change", () => { d.kind = (cb.checked ? "conv_transpose" : "conv") + conv[2] + "d"; renderControls(true); changed(); });
        tr.appendChild(cb); tr.appendChild(document.createTextNode(" transposed")); box.appendChild(tr);
      }
      const defaults = state.layer_kinds[d.kind] || {};
      for (const key of Object.keys(defaults)) {
        if (key === "output_padding" && !(conv && conv[1])) continue;  // only meaningful for a transposed convolution
        const row = el("label", { class: "row" }); row.appendChild(el("span", {}, key));
        const value = d.params[key] ?? defaults[key];
        let input;
        if (key === "padding_mode") {
          input = el("select", { "data-key": key });
          for (const m of ["zeros", "reflect", "replicate", "circular"]) input.appendChild(el("option", { value: m }, m));
          input.value = value;
        } else if (defaults[key] === "true" || defaults[key] === "false") {
          input = el("select", { "data-key": key });
          for (const m of ["true", "false"]) input.appendChild(el("option", { value: m }, m));
          input.value = String(value).toLowerCase();
        } else {
          input = el("input", { type: "text", "data-key": key, placeholder: defaults[key] || "default", spellcheck: "false" });
          input.value = value;
        }
        input.id = "param-" + key;
        input.addEventListener(input.tagName === "SELECT" ? "change" : "input", () => { d.params[key] = input.value; changed(); });
        row.appendChild(input); box.appendChild(row);
      }
    }
    const q = $("quantity"); clear(q);
    for (const name of state.quantities) q.appendChild(el("option", { value: name }, name));
    q.disabled = !state.editable; if (d.quantity) q.value = d.quantity;
    const sizes = $("sizes"); clear(sizes);
    for (const sym of state.symbols) {
      const row = el("label", { class: "row" }); row.appendChild(el("span", { class: "mono" }, sym));
      const input = el("input", { type: "number", min: "1", step: "1", id: "size-" + sym });
      input.value = d.sizes[sym] ?? "";
      input.addEventListener("input", () => { d.sizes[sym] = input.value; changed(); });
      row.appendChild(input); sizes.appendChild(row);
    }
    $("simplify").checked = d.simplify;
    const termRow = $("term-row"); const term = $("term"); clear(term);
    termRow.hidden = state.terms.length < 2;
    state.terms.forEach((t, j) => term.appendChild(el("option", { value: String(j), title: t }, "term " + (j + 1) + " of " + state.terms.length)));
    term.value = String(d.term);
  }

  function requestBody() {
    const d = draft; const sizes = {};
    for (const [k, v] of Object.entries(d.sizes)) {
      const n = Number(v);
      sizes[k] = (String(v).trim() !== "" && Number.isInteger(n)) ? n : String(v);
    }
    const body = { sizes, simplify: d.simplify, term: d.term };
    if (state.spec_editable) body.spec = specText(d);
    if (state.editable) body.quantity = d.quantity;
    return body;
  }
  function changed() {
    if (MODE !== "server") return;
    $("spec-text").textContent = state.spec_editable ? specText(draft) : state.target;
    clearTimeout(timer);
    timer = setTimeout(replan, 250);
  }
  async function post(route, body) {
    const response = await fetch(route, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    let data;
    try { data = await response.json(); } catch (e) { data = { error: "the server sent no JSON (status " + response.status + ")" }; }
    return { ok: response.ok, data };
  }
  async function replan() {
    const number = ++requestNumber;
    $("status").textContent = "planning…";
    let result;
    try { result = await post("/api/plan", requestBody()); }
    catch (e) { result = { ok: false, data: { error: "the explorer server does not answer (was it stopped?)" } }; }
    if (number !== requestNumber) return;  // a newer request is on its way
    if (!result.ok) {
      $("status").textContent = "not applied: the page still shows the last valid settings";
      showError(result.data.error || "request failed");
      return;
    }
    state = result.data;
    hideError();
    $("status").textContent = "re-planned: " + state.candidates.length + " candidate orders";
    // the controls keep what the user typed (it may be newer than this answer); new size symbols get their values
    for (const sym of state.symbols) if (!(sym in draft.sizes)) draft.sizes[sym] = state.settings.sizes[sym];
    selected.candidate = null; selected.step = 0;  // a new plan: start at tnderiv's own choice
    renderAll();
  }
  function showError(message) { const e = $("error"); e.textContent = message; e.hidden = false; }
  function hideError() { const e = $("error"); e.textContent = ""; e.hidden = true; }

  // ----- diagram, candidates, steps ----------------------------------------------------------------
  function renderDiagram() {
    const box = $("diagram"); clear(box);
    const svg = box.appendChild(importSvg(state.diagram.svg));
    const natural = parseFloat(svg.getAttribute("width") || "0");
    if (natural > 0) {  // layer-sized diagrams are small at the emitter's scale: enlarge, within the panel
      svg.style.width = Math.min(natural * 1.7, Math.max(box.clientWidth - 8, 200)) + "px";
      svg.style.height = "auto";
    }
    $("term-label").textContent = state.terms.length > 1 ? "term " + (state.term + 1) + " of " + state.terms.length : "";
    const hover = $("hover");
    box.querySelectorAll("[data-node], [data-leg]").forEach((g) => {
      const title = g.querySelector("title");
      const text = title ? title.textContent : "";
      g.addEventListener("mouseenter", () => { hover.textContent = text; });
      g.addEventListener("mouseleave", () => { hover.textContent = "Hover a node or a leg: name · size · kind"; });
    });
  }
  function current() { return state.candidates.find((c) => c.id === selected.candidate) || state.candidates[0]; }

  function renderCandidates() {
    const body = $("candidates").tBodies[0]; clear(body);
    for (const c of state.candidates) {
      const tr = el("tr", { "data-candidate": c.id });
      const name = el("td", { class: "names" });
      name.appendChild(document.createTextNode(c.names[0]));
      if (c.tnderiv) name.appendChild(el("span", { class: "pill", title: "what tnderiv.plan picks with optimize='auto'" }, "tnderiv"));
      if (c.names.length > 1) name.appendChild(el("div", { class: "alias" }, "= " + c.names.slice(1).join(", ")));
      tr.appendChild(name);
      tr.appendChild(el("td", { class: "num", title: full(c.flops_dense) }, compact(c.flops_dense)));
      tr.appendChild(el("td", { class: "num", title: full(c.flops) }, compact(c.flops)));
      tr.appendChild(el("td", { class: "num", title: full(Math.round(c.score)) }, compact(c.score)));
      tr.appendChild(el("td", { class: "num", title: full(c.peak_memory) + " bytes" }, bytes(c.peak_memory)));
      const time = el("td", { class: "num time" });
      if (MODE === "server") {
        const button = el("button", { type: "button", class: "small measure", title: "time this order on this machine" }, "measure");
        button.addEventListener("click", (event) => { event.stopPropagation(); measure(c, time, button); });
        time.appendChild(button);
      } else {
        time.appendChild(el("span", { class: "muted", title: "measuring needs the server (tnderiv explore)" }, "—"));
      }
      tr.appendChild(time);
      tr.addEventListener("click", () => { selected.candidate = c.id; selected.step = 0; renderSelection(); });
      body.appendChild(tr);
    }
    $("auto-note").textContent = state.auto_note || "";
  }
  async function measure(c, cell, button) {
    button.disabled = true; button.textContent = "timing…";
    const body = Object.assign({}, requestBodyOfState(), { candidate: c.id });
    let result;
    try { result = await post("/api/measure", body); }
    catch (e) { result = { ok: false, data: { error: "the explorer server does not answer" } }; }
    clear(cell);
    if (result.ok) {
      const r = result.data;
      cell.appendChild(el("span", { class: "measured", title: "fastest of " + r.repeats + " runs on " + r.device_name +
        "; median " + seconds(r.median_s) }, seconds(r.best_s)));
    } else {
      cell.appendChild(el("span", { class: "muted" }, "failed"));
      showError(result.data.error || "measurement failed");
    }
  }
  function requestBodyOfState() {
    const s = state.settings; const body = { sizes: s.sizes, simplify: s.simplify, term: s.term };
    if (state.spec_editable) body.spec = s.spec;
    if (state.editable) body.quantity = s.quantity;
    return body;
  }

  function renderSelection() {
    const c = current();
    selected.candidate = c.id;
    document.querySelectorAll("#candidates tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.candidate === c.id));
    const n = c.steps.length;
    const slider = $("step-slider");
    slider.max = String(Math.max(n, 1)); slider.disabled = n < 2;
    selected.step = Math.min(selected.step, Math.max(n - 1, 0));
    $("steps-title").textContent = "of " + c.names[0] + " · " + n + (n === 1 ? " step" : " steps");
    const body = $("steps").tBodies[0]; clear(body);
    c.steps.forEach((s, j) => {
      const tr = el("tr", { "data-step": String(j) });
      tr.appendChild(el("td", { class: "num" }, j + 1));
      tr.appendChild(el("td", { class: "eq" }, s.equation));
      tr.appendChild(el("td", { class: "kernel" }, s.kernel));
      tr.appendChild(el("td", { class: "num", title: full(s.flops) }, compact(s.flops)));
      tr.appendChild(el("td", { class: "num", title: full(s.flops_dense) }, compact(s.flops_dense)));
      tr.appendChild(el("td", { class: "num", title: full(s.size) + " elements" }, compact(s.size)));
      tr.addEventListener("click", () => selectStep(j));
      body.appendChild(tr);
    });
    renderPlot(c);
    renderExport(c);
    selectStep(selected.step);
  }

  function selectStep(j) {
    const c = current();
    selected.step = j;
    $("step-slider").value = String(j + 1);
    $("step-number").textContent = c.steps.length ? (j + 1) + " / " + c.steps.length : "–";
    document.querySelectorAll("#steps tbody tr").forEach((tr) => tr.classList.toggle("selected", Number(tr.dataset.step) === j));
    document.querySelectorAll("#plot .bar").forEach((b) => b.classList.toggle("selected", Number(b.dataset.step) === j));
    const step = c.steps[j];
    const info = $("intermediate");
    const nodes = new Set(step ? step.nodes : []), fresh = new Set(step ? step.fresh : []);
    document.querySelectorAll("#diagram [data-node]").forEach((g) => {
      const k = Number(g.dataset.node);
      g.classList.toggle("hl", nodes.has(k)); g.classList.toggle("fresh", fresh.has(k));
    });
    const legOf = {}; for (const leg of state.diagram.legs) legOf[leg.name] = leg;
    document.querySelectorAll("#diagram [data-leg]").forEach((g) => {
      const leg = legOf[g.dataset.leg];
      const inside = leg && !leg.open && leg.nodes.length > 0 && leg.nodes.every((k) => nodes.has(k));
      g.classList.toggle("hl-leg", Boolean(inside));
    });
    if (!step) { info.textContent = c.steps.length ? "" : "No contraction step: the result is a view or a broadcast of one operand."; return; }
    const shape = step.out_shape.join("×") || "scalar";
    let text = "step " + (j + 1) + " (" + step.kernel + ") creates #" + (j + 1) + "[" + step.out_legs.join(", ") + "] · " + shape +
      " = " + full(step.size) + " elements (" + bytes(step.size * 4) + " float32)";
    if (!step.nodes.length) text += " · this order runs on a rewritten network: no nodes of the drawing to highlight";
    else text += " · covers " + step.nodes.map((k) => state.diagram.nodes[k].name).join(", ");
    info.textContent = text;
  }

  function renderPlot(c) {
    const box = $("plot"); clear(box);
    box.hidden = c.steps.length === 0;
    if (box.hidden) return;
    const W = Math.max(box.clientWidth || 640, 320), H = 150, left = 46, right = 8, top = 14, bottom = 22;
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      "aria-label": "intermediate size per step (elements, log scale)" });
    const sizes = c.steps.map((s) => Math.max(s.size, 1));
    const maxExp = Math.max(1, Math.ceil(Math.log10(Math.max(...sizes, 10))));
    const y = (v) => top + (H - top - bottom) * (1 - Math.log10(Math.max(v, 1)) / maxExp);
    for (let e = 0; e <= maxExp; e++) {
      svg.appendChild(svgEl("line", { class: "grid", x1: left, x2: W - right, y1: y(10 ** e), y2: y(10 ** e) }));
      const label = svgEl("text", { x: left - 6, y: y(10 ** e) + 3, "text-anchor": "end" }); label.textContent = "1e" + e;
      svg.appendChild(label);
    }
    svg.appendChild(svgEl("line", { class: "axis", x1: left, x2: left, y1: top, y2: H - bottom }));
    const n = Math.max(c.steps.length, 1), slot = (W - left - right) / n, bar = Math.min(48, slot * 0.7);
    c.steps.forEach((s, j) => {
      const x = left + slot * j + (slot - bar) / 2;
      const rect = svgEl("rect", { class: "bar", x, y: y(sizes[j]), width: bar, height: Math.max(1, H - bottom - y(sizes[j])), "data-step": j });
      const title = svgEl("title", {}); title.textContent = "step " + (j + 1) + ": " + full(s.size) + " elements";
      rect.appendChild(title);
      rect.addEventListener("click", () => selectStep(j));
      svg.appendChild(rect);
      const label = svgEl("text", { x: left + slot * j + slot / 2, y: H - 7, "text-anchor": "middle" }); label.textContent = String(j + 1);
      svg.appendChild(label);
    });
    const cap = svgEl("text", { x: W - right, y: top + 2, "text-anchor": "end" }); cap.textContent = "intermediate size (elements, log scale)";
    svg.appendChild(cap);
    box.appendChild(svg);
  }

  function renderExport(c) {
    $("export-python").textContent = c.export.python;
    $("export-json").textContent = compactJson(c.export.json);
  }
  function compactJson(obj) {  // one key a line, each value on one line (still JSON)
    return "{\n" + Object.entries(obj).map(([k, v]) => "  " + JSON.stringify(k) + ": " + JSON.stringify(v)).join(",\n") + "\n}";
  }
  function download(name, text) {
    const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    const a = el("a", { href: url, download: name }); document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function renderStrip() {
    const panel = $("strip-panel"), box = $("strip"); clear(box);
    if (!state.strip) {
      $("strip-title").textContent = state.settings.simplify ? "(no rewrite rule fires)" : "(simplify is off: the diagram as derived)";
      return;
    }
    const counts = {};
    for (const r of state.strip.rules) counts[r] = (counts[r] || 0) + 1;
    $("strip-title").textContent = state.strip.rules.length + " rewrites: " +
      Object.entries(counts).map(([r, k]) => r + (k > 1 ? " ×" + k : "")).join(", ");
    box.appendChild(importSvg(state.strip.svg));
    panel.hidden = false;
  }

  function renderAll() {
    $("expression").textContent = state.expression;
    $("expression").title = state.expression;
    renderControls();
    const shapes = $("shapes"); clear(shapes);
    for (const [name, shape] of Object.entries(state.shapes)) {
      const tr = el("tr"); tr.appendChild(el("td", {}, name)); tr.appendChild(el("td", {}, "[" + shape.join(", ") + "]"));
      shapes.appendChild(tr);
    }
    renderDiagram();
    renderCandidates();
    renderStrip();
    renderSelection();
  }

  // ----- wiring ------------------------------------------------------------------------------------
  $("step-slider").addEventListener("input", (e) => selectStep(Number(e.target.value) - 1));
  $("quantity").addEventListener("change", (e) => { draft.quantity = e.target.value; draft.term = 0; changed(); });
  $("simplify").addEventListener("change", (e) => { draft.simplify = e.target.checked; changed(); });
  $("term").addEventListener("change", (e) => { draft.term = Number(e.target.value); changed(); });
  $("copy-path").addEventListener("click", () => {
    const text = JSON.stringify(current().export.json.optimize);
    const manual = () => { $("status").textContent = "the clipboard is not available here: copy the optimize value from the export below"; };
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => { $("status").textContent = "path copied: " + text; }, manual);
    else manual();
  });
  $("download-path").addEventListener("click", () => download("tnderiv-order.json", compactJson(current().export.json)));
  $("download-report").addEventListener("click", () => download("tnderiv-report.json", JSON.stringify(state, null, 1)));
  if (MODE === "server") {
    $("mode-badge").textContent = "live · re-plans on change";
  } else {
    $("mode-badge").textContent = "static page";
    $("mode-badge").classList.add("static");
    $("static-note").hidden = false;
    $("controls").disabled = true;
  }
  draft = draftFromState();
  renderAll();
  document.body.dataset.ready = "true";
})();
