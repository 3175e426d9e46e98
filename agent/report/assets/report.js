// vlagent report: keyboard stepping, overlay/error toggles, status filters, zoom. No network.
(function () {
  "use strict";
  const steps = Array.from(document.querySelectorAll("section.step"));
  const strip = Array.from(document.querySelectorAll("nav.strip a"));
  let current = -1;

  function select(i) {
    const visible = steps.filter((s) => s.offsetParent !== null);
    if (!visible.length) return;
    current = Math.max(0, Math.min(i, visible.length - 1));
    steps.forEach((s) => s.classList.remove("current"));
    strip.forEach((a) => a.classList.remove("current"));
    const s = visible[current];
    s.classList.add("current");
    s.scrollIntoView({ block: "start" });
    const link = strip.find((a) => a.getAttribute("href") === "#" + s.id);
    if (link) { link.classList.add("current"); link.scrollIntoView({ inline: "center", block: "nearest" }); }
  }

  function toggle(id, cls, invert) {
    const box = document.getElementById(id);
    if (!box) return;
    const apply = () => document.body.classList.toggle(cls, invert ? !box.checked : box.checked);
    box.addEventListener("change", apply);
    apply();
  }
  toggle("ov", "no-overlay", true);
  toggle("errs", "only-errors", false);

  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea")) return;
    if (e.key === "j" || e.key === "ArrowDown" && e.altKey) { select(current + 1); e.preventDefault(); }
    if (e.key === "k" || e.key === "ArrowUp" && e.altKey) { select(current - 1); e.preventDefault(); }
    if (e.key === "o") { const b = document.getElementById("ov"); if (b) { b.checked = !b.checked; b.dispatchEvent(new Event("change")); } }
    if (e.key === "Escape") document.getElementById("lightbox").hidden = true;
  });

  document.body.classList.add("js");

  // Before / after: the screen the action was decided on, and the screen it led to.
  document.querySelectorAll(".ba").forEach((bar) => {
    const fig = bar.nextElementSibling;
    bar.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => {
      const after = b.dataset.show === "after";
      fig.querySelector("img").src = after ? fig.dataset.after : fig.dataset.before;
      fig.classList.toggle("after", after);
      bar.querySelectorAll("button").forEach((x) => x.classList.toggle("on", x === b));
    }));
  });

  const box = document.getElementById("lightbox");
  document.querySelectorAll("figure.shot").forEach((f) => f.addEventListener("click", () => {
    box.querySelector("img").src = f.querySelector("img").src;
    box.hidden = false;
  }));
  box.addEventListener("click", () => { box.hidden = true; });

  // Summary page: filter rows by status.
  const rows = Array.from(document.querySelectorAll("table.summary tbody tr"));
  document.querySelectorAll("button.filter").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("button.filter").forEach((x) => x.classList.toggle("active", x === b));
    rows.forEach((r) => { r.hidden = b.dataset.status !== "" && r.dataset.status !== b.dataset.status; });
  }));
})();
