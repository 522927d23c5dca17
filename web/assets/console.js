// The console's only script: the live preview of the group editor. Pages
// work without it; the preview then updates on save.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-preview]")) {
    const target = document.getElementById("preview");
    if (!target) continue;
    let timer = 0, seq = 0;
    const update = () => {
      const params = new URLSearchParams();
      for (const name of ["orig", "name", "description", "when", "members", "include"]) {
        const el = form.elements.namedItem(name);
        if (el) params.set(name, el.value);
      }
      const mine = ++seq;
      fetch(form.dataset.preview + "?" + params.toString(), {
        credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" },
      }).then((r) => r.ok ? r.text() : Promise.reject(r.status))
        .then((html) => {
          // Server-rendered and escaped by html/template; only the newest
          // answer is shown.
          if (mine === seq) target.innerHTML = html;
        })
        .catch(() => {});
    };
    form.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(update, 200);
    });
  }
});
