// The report's controls: Play / Pause / Stop All per audio table, play / stop per row, sortable tables.
(function () {
  "use strict";
  const audios = (root) => Array.from(root.querySelectorAll("audio"));
  const play = (list) => list.forEach((a) => { a.play().catch(() => {}); });
  const pause = (list) => list.forEach((a) => a.pause());
  const stop = (list) => list.forEach((a) => { a.pause(); a.currentTime = 0; });

  document.querySelectorAll("section.system").forEach((section) => {
    const table = section.querySelector("[data-audio-table]");
    if (!table) return;
    const act = { "play-all": play, "pause-all": pause, "stop-all": stop };
    section.querySelectorAll(".controls [data-action]").forEach((b) => {
      b.addEventListener("click", () => act[b.dataset.action](audios(table)));
    });
    table.querySelectorAll("tr[data-row]").forEach((row) => {
      row.querySelector('[data-action="play-row"]').addEventListener("click", () => play(audios(row)));
      row.querySelector('[data-action="stop-row"]').addEventListener("click", () => stop(audios(row)));
    });
  });

  document.querySelectorAll("table.sortable").forEach((table) => {
    const body = table.tBodies[0];
    table.querySelectorAll("thead th").forEach((th, column) => {
      const button = th.querySelector("button[data-sort]");
      if (!button) return;
      button.addEventListener("click", () => {
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        const numeric = button.dataset.sort === "number";
        const key = (row) => {
          const v = row.cells[column].dataset.value;
          return numeric ? parseFloat(v) : v;
        };
        const rows = Array.from(body.rows).sort((a, b) => {
          const x = key(a), y = key(b);
          const c = numeric ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
          return ascending ? c : -c;
        });
        rows.forEach((r) => body.appendChild(r));
        table.querySelectorAll("thead th").forEach((o) => o.setAttribute("aria-sort", "none"));
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      });
    });
  });
})();
