// The admin UI's behaviour: charts drawn from data attributes, also in fragments htmx swaps in.
"use strict";

(function () {
  const COLORS = {
    pending: "#9ca3af", queued: "#60a5fa", retrying: "#f59e0b", sent: "#16a34a",
    failed: "#dc2626", expired: "#7c3aed", cancelled: "#4b5563",
  };

  function draw(canvas) {
    if (typeof Chart === "undefined" || canvas.dataset.drawn) return;
    canvas.dataset.drawn = "1";
    const labels = JSON.parse(canvas.dataset.labels || "[]");
    const values = JSON.parse(canvas.dataset.values || "[]");
    const kind = canvas.dataset.kind || "bar";
    const round = kind === "doughnut";
    new Chart(canvas, {
      type: kind,
      data: {
        labels: labels,
        datasets: [{
          label: canvas.dataset.label || "",
          data: values,
          backgroundColor: round ? labels.map((l) => COLORS[l] || "#6b7280") : "#2563eb",
          borderColor: round ? "#fff" : "#2563eb",
          fill: false,
          tension: 0.2,
        }],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        plugins: { legend: { display: round, position: "right" } },
        scales: round ? {} : { y: { beginAtZero: true, ticks: { precision: 0 } } },
      },
    });
  }

  function drawAll(root) {
    (root || document).querySelectorAll("canvas.chart").forEach(draw);
  }

  function foldMenuOnWideScreens() {
    const menu = document.querySelector("nav details.menu");
    if (menu && window.matchMedia("(min-width: 900px)").matches) menu.open = true;
  }

  document.addEventListener("DOMContentLoaded", function () {
    foldMenuOnWideScreens();
    drawAll(document);
    if (window.htmx) window.htmx.onLoad(drawAll);
  });

  // A refreshing region someone is using (focus inside it, a history row open) is not swapped under them.
  // Done here rather than in an hx-trigger filter: filters need eval, which the page's policy forbids.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    const elt = evt.detail.elt;
    if (elt.hasAttribute("data-hold-while-used") &&
        (elt.contains(document.activeElement) || elt.querySelector("details[open]"))) {
      evt.preventDefault();
    }
  });
})();
