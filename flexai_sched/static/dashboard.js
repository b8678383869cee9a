// flexai-sched page: nodes and cards drawn to scale, live, with "why pending".
// Plain JS, no build step. Reads /v1/dashboard (everything once, then what changed since
// the last serial) and /v1/explain. Rows are virtualised: only those in view are in the
// DOM, so 5,000 nodes x 8 cards stay quick. Every text from the cluster goes through esc().
"use strict";
(function () {
  const ROW = 80, POLL_MS = 2000, OVERSCAN = 6, MAX_ROWS_LISTED = 300;
  const $ = (id) => document.getElementById(id);
  const nodes = new Map();   // name -> node JSON from the server
  let order = [];            // names after the filters, sorted
  let serial = 0, skew = 0, ttl = 60, paused = false, selected = null, summary = {}, pending = [];
  let maxMib = 1, maxCards = 1, lastOk = 0, firstDone = false;
  let mark = null; // the explained pod's closest card: {node, card}, outlined on the map
  const facets = { ns: new Set(), model: new Set() };
  const view = $("viewport"), spacer = $("spacer");

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const gib = (mib) => (mib / 1024).toFixed(mib >= 10240 ? 0 : 1) + " GiB";
  const g = (mib) => (mib / 1024).toFixed(mib >= 10240 ? 0 : 1) + "G";
  const hue = (s) => { let h = 0; for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0; return h % 360; };
  const age = (hb) => hb == null ? null : Math.max(0, Date.now() / 1000 + skew - hb);
  const ago = (s) => s == null ? "never" : s < 90 ? Math.round(s) + " s ago" : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
  const isStale = (n) => { const a = age(n.hb); return a == null || a > ttl; };

  // ---- data ----
  async function poll() {
    if (paused) return;
    try {
      const r = await fetch("/v1/dashboard?since=" + serial, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      apply(await r.json());
      lastOk = Date.now();
      $("status").textContent = "Live · updated " + new Date().toLocaleTimeString();
    } catch (e) {
      $("status").textContent = "Cannot reach the scheduler (" + e.message + "); retrying";
    }
  }

  function apply(d) {
    skew = d.now - Date.now() / 1000;
    ttl = d.heartbeat_ttl_s;
    if (d.full) nodes.clear();
    for (const n of d.nodes) nodes.set(n.name, n);
    for (const [name, hb] of d.beats) { const n = nodes.get(name); if (n) n.hb = hb; }
    for (const name of d.gone) nodes.delete(name);
    const changed = d.full || d.nodes.length || d.gone.length;
    serial = d.serial;
    summary = d.summary;
    pending = d.pending;
    if (changed) { reindex(); refilter(); }
    else { paint(); }
    drawSummary();
    drawWaiting();
    if (selected && nodes.has(selected)) drawDetail(selected);
    if (!firstDone) { firstDone = true; performance.mark("flexai-rendered"); window.__flexaiRendered = performance.now(); }
  }

  function reindex() {
    maxMib = 1; maxCards = 1; facets.ns.clear(); facets.model.clear();
    for (const n of nodes.values()) {
      maxCards = Math.max(maxCards, n.cards.length);
      for (const c of n.cards) {
        maxMib = Math.max(maxMib, c.mib); facets.model.add(c.model);
        for (const s of c.slices) { facets.ns.add(s.ns); s.key = (s.ns + "/" + s.pod).toLowerCase(); }
      }
    }
    fillSelect($("f-ns"), [...facets.ns].sort());
    fillSelect($("f-model"), [...facets.model].sort());
    fillSelect($("f-node"), [...nodes.keys()].sort());
  }

  function fillSelect(sel, values) {
    const keep = sel.value;
    const want = ["", ...values];
    if (sel.options.length === want.length && [...sel.options].every((o, i) => o.value === want[i])) return;
    sel.innerHTML = '<option value="">all</option>' + values.map((v) => `<option>${esc(v)}</option>`).join("");
    sel.value = values.includes(keep) ? keep : "";
  }

  // ---- filters ----
  function filters() {
    return { ns: $("f-ns").value, node: $("f-node").value, model: $("f-model").value,
             pod: $("f-pod").value.trim().toLowerCase(), problems: $("f-problems").checked };
  }
  const sliceHit = (s, f) => (!f.ns || s.ns === f.ns) && (!f.pod || s.key.includes(f.pod));

  function matches(n, f) {
    if (f.node && n.name !== f.node) return false;
    if (f.model && !n.cards.some((c) => c.model === f.model)) return false;
    if (f.problems && !(isStale(n) || n.cards.some((c) => !c.ok))) return false;
    if (f.ns || f.pod) return n.cards.some((c) => c.slices.some((s) => sliceHit(s, f)));
    return true;
  }

  function refilter() {
    const f = filters();
    order = [...nodes.values()].filter((n) => matches(n, f)).map((n) => n.name).sort();
    spacer.style.height = order.length * ROW + "px";
    $("shown").textContent = `${order.length} of ${nodes.size} nodes shown`;
    paint();
  }

  // ---- drawing ----
  const rows = new Map(); // index in order -> element
  function paint(all) {
    if (all) { for (const el of rows.values()) el.remove(); rows.clear(); }
    const top = view.scrollTop, h = view.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(order.length - 1, Math.ceil((top + h) / ROW) + OVERSCAN);
    for (const [i, el] of rows) if (i < first || i > last) { el.remove(); rows.delete(i); }
    const f = filters(), fkey = JSON.stringify([f, mark]);
    const width = Math.max(200, (view.clientWidth || 900) - 200);
    for (let i = first; i <= last; i++) {
      const n = nodes.get(order[i]);
      const key = [n.name, n.v, isStale(n), selected === n.name, fkey].join("\u0000");
      let el = rows.get(i);
      if (el && el.dataset.key === key) { el.querySelector(".hb").textContent = "heartbeat " + ago(age(n.hb)); continue; }
      const fresh = drawRow(n, i, f, width);
      fresh.dataset.key = key;
      const focused = el && el === document.activeElement;
      if (el) el.replaceWith(fresh); else view.appendChild(fresh);
      if (focused) fresh.focus();
      rows.set(i, fresh);
    }
    if (!order.length) {
      if (!view.querySelector(".empty")) view.insertAdjacentHTML("beforeend", '<p class="empty">No node matches the filters.</p>');
    } else { const e = view.querySelector(".empty"); if (e) e.remove(); }
  }

  function drawRow(n, i, f, width) {
    const el = document.createElement("div");
    const stale = isStale(n), bad = n.cards.filter((c) => !c.ok).length;
    el.className = "row" + (stale ? " stale" : "") + (selected === n.name ? " sel" : "");
    el.style.top = i * ROW + "px";
    el.tabIndex = 0;
    el.setAttribute("role", "listitem");
    el.setAttribute("aria-posinset", String(i + 1));
    el.setAttribute("aria-setsize", String(order.length));
    el.dataset.node = n.name;
    const used = n.cards.reduce((a, c) => a + c.cores, 0), total = 100 * n.cards.length;
    const label = `${n.name}: ${n.cards.length} cards, ${Math.round(100 * used / (total || 1))}% of cores allocated` +
      (stale ? `, stale: heartbeat ${ago(age(n.hb))}` : "") + (bad ? `, ${bad} unhealthy card(s)` : "");
    el.setAttribute("aria-label", label);
    const per = (width - 6 * maxCards) / maxCards;
    let html = `<div class="who"><div class="name"><b title="${esc(n.name)}">${esc(n.name)}</b>` +
      (stale ? `<span class="badge stale">stale</span>` : "") + (bad ? `<span class="badge bad">${bad} unhealthy</span>` : "") +
      `</div><small class="hb">heartbeat ${esc(ago(age(n.hb)))}</small><small>${n.cards.length} × ${esc(n.cards[0] ? n.cards[0].model : "no cards")}</small></div><div class="cards">`;
    for (const c of n.cards) html += drawCard(n, c, Math.max(40, per * c.mib / maxMib), f);
    el.innerHTML = html + "</div>";
    return el;
  }

  function drawCard(n, c, w, f) {
    const freeCores = Math.max(0, 100 - c.cores), freeMib = Math.max(0, c.mib - c.out - c.used);
    const filtering = f.ns || f.pod;
    let cores = "", mem = "";
    for (const s of c.slices) {
      const h = hue(s.ns), hit = filtering && sliceHit(s, f), dim = filtering && !hit;
      const cls = "slice" + (dim ? " dim" : "") + (hit ? " hit" : "");
      const tip = `${s.ns}/${s.pod} · ${s.c}${s.init ? " (init)" : ""} · ${s.cores}% · ${gib(s.mib)}`;
      const data = `data-pod="${esc(s.ns + "/" + s.pod)}" data-container="${esc(s.c)}" title="${esc(tip)}"`;
      const text = w * s.cores / 100 > 56 ? esc(s.pod) : "";
      cores += `<span class="${cls}" ${data} data-cores="${s.cores}" style="width:${s.cores}%;background:hsl(${h},60%,28%)">${text}</span>`;
      mem += `<span class="${cls}" ${data} data-mib="${s.mib}" style="width:${100 * s.mib / c.mib}%;background:hsl(${h},45%,55%)"></span>`;
    }
    if (c.out) mem += `<span class="out" title="${esc(gib(c.out) + " used outside our slices")}" style="width:${100 * c.out / c.mib}%"></span>`;
    const cap = c.ok ? `${freeCores}% ${g(freeMib)} free` : "UNHEALTHY";
    const label = `card ${c.i} ${c.model}${c.ok ? "" : " (unhealthy)"}: ${c.slices.length} slice(s), ${freeCores}% cores and ${gib(freeMib)} free of ${gib(c.mib)}`;
    const near = mark && mark.node === n.name && mark.card === c.i;
    return `<div class="card${c.ok ? "" : " unhealthy"}${near ? " closest" : ""}" style="width:${w.toFixed(1)}px" data-card="${c.i}" data-cores-free="${freeCores}" ` +
      `data-mib-free="${freeMib}" title="${esc(label)}" aria-label="${esc(label)}">` +
      `<div class="bar" aria-hidden="true">${cores}</div><div class="bar" aria-hidden="true">${mem}</div>` +
      `<div class="cap" aria-hidden="true">#${c.i} ${esc(cap)}</div></div>`;
  }

  function drawSummary() {
    const s = summary, pct = (a, b) => b ? (100 * a / b).toFixed(1) + "%" : "–";
    const items = [
      ["Nodes", `${s.nodes}`, s.stale_nodes ? `${s.stale_nodes} stale` : "all reporting", s.stale_nodes],
      ["Cards", `${s.cards}`, s.unhealthy_cards ? `${s.unhealthy_cards} unhealthy` : "all healthy", s.unhealthy_cards],
      ["Cores allocated", pct(s.cores_allocated, s.cores_total), `${(s.cores_allocated / 100).toFixed(1)} of ${s.cores_total / 100} cards`],
      ["Memory allocated", pct(s.memory_mib_allocated, s.memory_mib_total), `${gib(s.memory_mib_allocated)} of ${gib(s.memory_mib_total)}`],
      ["Stranded cores", `${(s.cores_stranded / 100).toFixed(2)} cards`, `${pct(s.cores_stranded, s.cores_free)} of free cores`, s.cores_stranded],
      ["Stranded memory", gib(s.memory_mib_stranded), `${pct(s.memory_mib_stranded, s.memory_mib_free)} of free memory`, s.memory_mib_stranded],
      ["Waiting pods", `${s.pending}`, "stranded: free capacity no waiting or typical pod shape can use"],
    ];
    $("totals").innerHTML = items.map(([k, v, sub, warn]) =>
      `<div class="${warn ? "warn" : ""}" data-key="${esc(k)}"><dt>${esc(k)}</dt><dd>${esc(v)} <small>${esc(sub)}</small></dd></div>`).join("");
  }

  function drawDetail(name) {
    const n = nodes.get(name);
    if (!n) return;
    let html = `<h2>${esc(n.name)}</h2><p>${isStale(n) ? '<span class="badge stale">stale</span>' : ""}heartbeat ${esc(ago(age(n.hb)))}</p>` +
      `<table><caption class="hint">Cards and the slices that hold them</caption><thead><tr><th scope="col">card</th><th scope="col">pod</th>` +
      `<th scope="col">container</th><th scope="col">cores</th><th scope="col">memory</th></tr></thead><tbody>`;
    for (const c of n.cards) {
      const freeMib = Math.max(0, c.mib - c.out - c.used);
      const head = `#${c.i}${c.ok ? "" : " UNHEALTHY"}`;
      for (const s of c.slices)
        html += `<tr data-card="${c.i}"><td>${esc(head)}</td><td>${esc(s.ns + "/" + s.pod)}</td><td>${esc(s.c)}${s.init ? " (init)" : ""}</td><td>${s.cores}%</td><td>${esc(gib(s.mib))}</td></tr>`;
      html += `<tr data-card="${c.i}" class="free"><td>${esc(head)}</td><td colspan="2"><i>free</i> (${c.vg} of ${c.maxvg} vGPUs used)</td>` +
        `<td>${Math.max(0, 100 - c.cores)}%</td><td>${esc(gib(freeMib))}</td></tr>`;
    }
    $("detail").innerHTML = html + "</tbody></table>";
  }

  function drawWaiting() {
    const el = $("waiting");
    if (!pending.length) { el.innerHTML = '<p class="hint">No pod is waiting (none that filter has seen unbound).</p>'; return; }
    const key = pending.map((p) => p.pod).join(",");
    if (el.dataset.key === key) return;
    el.dataset.key = key;
    el.innerHTML = `<p>Waiting (seen by filter, not bound):</p><ul>` + pending.slice(0, 20).map((p) => {
      const [ns, name] = p.pod.split("/");
      return `<li><button type="button" data-ns="${esc(ns)}" data-name="${esc(name)}">${esc(p.pod)}</button> <small>${esc(p.shape)}</small></li>`;
    }).join("") + "</ul>";
  }

  // ---- why pending ----
  async function explain(url, init) {
    const out = $("explain");
    out.innerHTML = "<p>Explaining…</p>";
    try {
      const r = await fetch(url, init);
      const d = await r.json();
      if (!r.ok) { out.innerHTML = `<p class="err">${esc(typeof d.detail === "string" ? d.detail : JSON.stringify(d.detail))}</p>`; return; }
      out.innerHTML = drawExplain(d);
      mark = d.closest ? { node: d.closest.node, card: d.closest.card } : null;
      paint();
    } catch (e) { out.innerHTML = `<p class="err">${esc(e.message)}</p>`; }
  }

  function drawExplain(d) {
    if (d.bound_node) return `<p class="verdict fits">${esc(d.pod)} is bound to ${esc(d.bound_node)}.</p>`;
    let html = d.fits.length
      ? `<p class="verdict fits">${esc(d.pod)} fits on ${d.fits.length} node(s): ${esc(d.fits.slice(0, 10).join(", "))}${d.fits.length > 10 ? ", …" : ""}</p>`
      : `<p class="verdict nofit">${esc(d.pod)} fits on no node now.</p>`;
    if (d.error) html += `<p class="err">${esc(d.error)}</p>`;
    const reasons = Object.entries(d.reasons);
    if (reasons.length) {
      html += `<table class="reasons"><caption class="hint">The filter's reasons (what kube-scheduler was told)</caption><thead><tr><th scope="col">nodes</th><th scope="col">reason</th></tr></thead><tbody>` +
        reasons.map(([r, k]) => `<tr><td>${k}</td><td>${esc(r)}</td></tr>`).join("") + "</tbody></table>";
    }
    if (d.closest) {
      const g = d.closest;
      html += `<p class="closest"><b>Closest card:</b> ${esc(g.node)} card ${g.card} (${esc(g.model)}), for container "${esc(g.container)}": missing ${esc(g.missing.join("; "))}. ` +
        `<button type="button" data-show="${esc(g.node)}" data-card="${g.card}">Show on the map</button></p>`;
    }
    if (d.plan) {
      html += `<p><b>Plan (${d.plan.moves.length} move${d.plan.moves.length === 1 ? "" : "s"}):</b></p><ol class="plan">` +
        d.plan.moves.map((m) => `<li>move ${esc(m.pod)} from ${esc(m.from_node)} card(s) ${esc(m.from_cards.join(", "))} to ${esc(m.to_node)} card(s) ${esc(m.to_cards.join(", "))}</li>`).join("") +
        `<li>then ${esc(d.pod)} fits on ${esc(d.plan.node)} card(s) ${esc(d.plan.cards.join(", "))}</li></ol>`;
    } else if (!d.fits.length && d.closest) {
      html += `<p>No plan of up to 3 moves frees a fitting slice${d.plan_complete ? "" : " among the nodes searched (" + d.plan_searched + ")"}.</p>`;
    }
    const failed = d.nodes.filter((n) => !n.fits);
    if (failed.length) {
      html += `<details><summary>Per node (${failed.length})</summary><table class="per-node"><thead><tr><th scope="col">node</th><th scope="col">reason</th><th scope="col">closest card</th></tr></thead><tbody>` +
        failed.slice(0, MAX_ROWS_LISTED).map((n) => `<tr data-node="${esc(n.node)}"><td>${esc(n.node)}</td><td class="reason">${esc(n.reason)}</td><td>${n.closest ? "#" + n.closest.card + ": " + esc(n.closest.missing.join("; ")) : ""}</td></tr>`).join("") +
        (failed.length > MAX_ROWS_LISTED ? `<tr><td colspan="3">… ${failed.length - MAX_ROWS_LISTED} more (the API lists all)</td></tr>` : "") + "</tbody></table></details>";
    }
    return html;
  }

  // ---- events ----
  let raf = 0;
  view.addEventListener("scroll", () => { if (!raf) raf = requestAnimationFrame(() => { raf = 0; paint(); }); });
  window.addEventListener("resize", () => paint(true));
  for (const id of ["f-ns", "f-node", "f-model", "f-problems"]) $(id).addEventListener("change", refilter);
  let typing = 0;
  $("f-pod").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refilter, 150); });
  $("pause").addEventListener("click", (e) => {
    paused = !paused;
    e.target.setAttribute("aria-pressed", String(paused));
    e.target.textContent = paused ? "Resume updates" : "Pause updates";
    if (!paused) poll();
  });
  function select(name) {
    selected = name;
    drawDetail(name);
    paint();
  }
  view.addEventListener("click", (e) => { const row = e.target.closest(".row"); if (row) { select(row.dataset.node); focusRow(order.indexOf(row.dataset.node)); } });
  view.addEventListener("keydown", (e) => {
    const row = e.target.closest(".row");
    if (!row) return;
    const i = order.indexOf(row.dataset.node);
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(row.dataset.node); focusRow(i); }
    else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      focusRow(Math.min(order.length - 1, Math.max(0, i + (e.key === "ArrowDown" ? 1 : -1))));
    }
  });
  function focusRow(i) {
    if (i < 0) return;
    const top = i * ROW;
    if (top < view.scrollTop) view.scrollTop = top;
    else if (top + ROW > view.scrollTop + view.clientHeight) view.scrollTop = top + ROW - view.clientHeight;
    paint();
    const el = rows.get(i);
    if (el) el.focus();
  }
  $("why-name").addEventListener("submit", () => {
    const ns = $("w-ns").value.trim() || "default", name = $("w-name").value.trim();
    if (name) explain(`/v1/explain/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`);
  });
  $("why-yaml").addEventListener("submit", () => {
    explain("/v1/explain", { method: "POST", headers: { "content-type": "application/yaml" }, body: $("w-yaml").value });
  });
  $("explain").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-show]");
    if (!b) return;
    $("f-node").value = b.dataset.show;
    refilter();
    select(b.dataset.show);
    focusRow(0);
  });
  $("waiting").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-name]");
    if (!b) return;
    $("w-ns").value = b.dataset.ns; $("w-name").value = b.dataset.name;
    explain(`/v1/explain/${encodeURIComponent(b.dataset.ns)}/${encodeURIComponent(b.dataset.name)}`);
  });

  poll();
  setInterval(poll, POLL_MS);
  setInterval(() => { if (!paused && Date.now() - lastOk < 10 * POLL_MS) paint(); }, 5000); // heartbeat ages move on
})();
