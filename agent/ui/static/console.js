// vlagent console: live updates over server-sent events, controls, approvals, take over. No network
// besides this console; every change is a same-origin POST (the cookie holds the token).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);

  async function post(url, body) {
    const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });
    const text = await r.text();
    let data = {};
    try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }

  // ---- runs page: start a run
  const start = $("start");
  if (start) start.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(start);
    const body = Object.fromEntries(f.entries());
    body.attended = f.get("attended") === "on";
    body.max_steps = body.max_steps ? Number(body.max_steps) : null;
    try { const r = await post("/api/runs", body); location.href = "/run?id=" + encodeURIComponent(r.id); }
    catch (err) { $("start-msg").textContent = err.message; }
  });

  // ---- runs page: start a suite; the live and past runs and the suites, kept current
  const startSuite = $("start-suite");
  if (startSuite) startSuite.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(startSuite);
    try {
      const r = await post("/api/suites", { paths: f.get("paths"), model: f.get("model"), workers: Number(f.get("workers") || 1) });
      $("suite-msg").textContent = "started: " + r.out;
    } catch (err) { $("suite-msg").textContent = err.message; }
  });
  const lists = $("live-lists");
  if (lists) {
    const refresh = async () => {  // the page's own lists, rendered again (1 s while anything is live)
      try {
        const html = await (await fetch(location.pathname + location.search, { cache: "no-store" })).text();
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live-lists");
        if (fresh) { lists.innerHTML = fresh.innerHTML; lists.dataset.live = fresh.dataset.live; }
      } catch (err) { /* the console stopped: keep what is shown */ }
      setTimeout(refresh, lists.dataset.live === "1" ? 1000 : 3000);
    };
    setTimeout(refresh, 1000);
  }

  // ---- playground
  const play = $("play");
  if (play) play.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(play);
    const body = { instruction: f.get("instruction"), display: f.get("display"), model: f.get("model"),
                   backend: f.get("backend"), base_url: f.get("base_url"), schema: f.get("schema") };
    const file = f.get("file");
    if (file && file.size) body.image = await new Promise((ok) => { const r = new FileReader(); r.onload = () => ok(r.result); r.readAsDataURL(file); });
    $("play-msg").textContent = "asking…";
    try {
      const a = await post("/api/playground", body);
      $("play-msg").textContent = "";
      $("answer").hidden = false;
      $("a-img").src = a.image;
      $("a-overlay").innerHTML = a.overlay || "";
      $("a-label").textContent = a.label || ("rejected: " + a.error);
      $("a-time").textContent = a.ms.toFixed(0) + " ms · " + a.model;
      $("a-raw").textContent = a.raw;
      $("a-value").hidden = !("value" in a);
      if ("value" in a) $("a-value").textContent = JSON.stringify(a.value, null, 2);
    } catch (err) { $("play-msg").textContent = err.message; }
  });

  // ---- a run
  const dataEl = $("run-data");
  if (!dataEl) return;
  const run = JSON.parse(dataEl.textContent);
  if (!run.live) return;
  const q = "?id=" + encodeURIComponent(run.id);
  let proposal = null, correction = null;

  document.querySelectorAll("[data-op]").forEach((b) => b.addEventListener("click", () => post("/api/control" + q, { op: b.dataset.op }).catch(alert)));
  if ($("take")) {
    $("take").addEventListener("click", () => post("/api/lease" + q, { take: true }).catch(alert));
    $("give").addEventListener("click", () => post("/api/lease" + q, { take: false }).catch(alert));
  }

  function setLease(held) {
    document.body.classList.toggle("taken", held);
    if ($("take")) { $("take").hidden = held; $("give").hidden = !held; }
    $("typebar").hidden = !held;
  }

  function point(e) {  // a click on the live screen, as the model's 0..1000 coordinates
    const r = $("frames").getBoundingClientRect();
    return [Math.round(Math.min(Math.max((e.clientX - r.left) / r.width, 0), 1) * 1000),
            Math.round(Math.min(Math.max((e.clientY - r.top) / r.height, 0), 1) * 1000)];
  }
  $("screen").addEventListener("click", (e) => {
    if (document.body.classList.contains("taken")) {
      post("/api/input" + q, { action: { action: "left_click", coordinate: point(e) } }).catch(alert);
    } else if (proposal && "coordinate" in proposal.action) {
      correction = Object.assign({}, proposal.action, { coordinate: point(e) });
      $("p-label").textContent = "correction: " + correction.action + " at (" + correction.coordinate.join(", ") + ")";
    }
  });
  $("human-text").addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const text = e.target.value; e.target.value = "";
    if (text) post("/api/input" + q, { action: { action: "type", text } }).catch(alert);
  });
  $("human-keys").addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    const keys = e.target.value.split("+").map((k) => k.trim()).filter(Boolean); e.target.value = "";
    if (keys.length) post("/api/input" + q, { action: { action: "key", keys } }).catch(alert);
  });
  $("human-enter").addEventListener("click", () => post("/api/input" + q, { action: { action: "key", keys: ["enter"] } }).catch(alert));
  $("human-tab").addEventListener("click", () => post("/api/input" + q, { action: { action: "key", keys: ["tab"] } }).catch(alert));

  function decide(verdict) {
    if (!proposal) return;
    const body = { step: proposal.step, verdict, note: $("p-note").value };
    if (verdict === "correct") {
      const a = correction || Object.assign({}, proposal.action);
      if (proposal.action.action === "type") a.text = $("p-text").value;
      body.action = a;
    }
    post("/api/decide" + q, body).catch(alert);
  }
  $("p-question").addEventListener("submit", (e) => {  // the model's question: the answer goes to its next step
    e.preventDefault();
    if (proposal) post("/api/decide" + q, { step: proposal.step, verdict: "answer", note: $("p-answer").value }).catch(alert);
  });
  $("decline").addEventListener("click", () => {
    if (proposal) post("/api/decide" + q, { step: proposal.step, verdict: "reject", note: "the person declined to answer" }).catch(alert);
  });
  $("approve").addEventListener("click", () => decide("approve"));
  $("correct").addEventListener("click", () => decide("correct"));
  $("reject").addEventListener("click", () => decide("reject"));

  function showProposal(p) {
    proposal = p; correction = null;
    document.body.classList.toggle("asking", !!p);
    $("proposal").hidden = !p;
    $("proposal-overlay").innerHTML = p ? p.overlay : "";
    if (!p) return;
    $("p-step").textContent = p.step; $("p-why").textContent = p.why; $("p-label").textContent = p.label;
    $("p-note").value = "";
    const asking = p.action.action === "ask_user";
    $("p-action").hidden = asking; $("p-question").hidden = !asking;
    if (asking) { $("p-qtext").textContent = p.action.text; $("p-answer").value = ""; $("p-answer").focus(); }
    const typing = p.action.action === "type";
    $("p-text-row").hidden = !typing;
    if (typing) $("p-text").value = p.action.text;
  }

  function badge(status) {
    const s = document.createElement("span");
    s.className = "badge s-" + status.replace(/ /g, "_"); s.textContent = status;
    $("status").replaceChildren(s);
  }

  // The frame stream ends when the connection drops (a restart, a long pause): open it again.
  $("frames").addEventListener("error", () => {
    if (document.body.classList.contains("ended")) return;
    setTimeout(() => { $("frames").src = "/api/frames" + q + "&t=" + Date.now(); }, 1000);
  });

  const timeline = $("timeline");
  const seen = new Set(Array.from(timeline.querySelectorAll("section.step")).map((s) => s.id));
  function apply(m) {
    if (m.state) { $("state").textContent = m.state; }
    switch (m.type) {
      case "step": {
        const box = document.createElement("div"); box.innerHTML = m.html;
        const sec = box.querySelector("section.step");
        if (sec && seen.has(sec.id)) break;
        if (sec) seen.add(sec.id);
        while (box.firstChild) timeline.appendChild(box.firstChild);
        break;
      }
      case "model": $("model-state").textContent = m.text; if (m.raw) $("raw").textContent = m.raw; break;
      case "proposal": showProposal(m); break;
      case "decided": showProposal(null); break;
      case "lease": setLease(!!m.holder); break;
      case "ended":
        showProposal(null); setLease(false); badge(m.status);
        $("reason").textContent = m.reason; $("checks").innerHTML = m.html; $("state").textContent = m.status;
        document.body.classList.add("ended");
        if (m.final) $("frames").src = m.final; else $("frames").removeAttribute("src");
        break;
    }
    if (m.type !== "proposal" && m.state !== "waiting for you" && proposal && m.type !== "model") showProposal(null);
  }
  const events = new EventSource("/api/events" + q + "&after=" + run.seq);
  events.onmessage = (e) => apply(JSON.parse(e.data));
  events.addEventListener("end", () => events.close());
  if (run.pending) showProposal(run.pending);
  setLease(run.lease);
})();
