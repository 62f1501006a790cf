// Aula dashboard: the fleet page (every device's state, release, models, health trends, and the alerts).
"use strict";

(function () {
  const A = window.Aula;
  const { h, $, clear } = A;
  const SVG = "http://www.w3.org/2000/svg";
  const FIGURES = [
    ["frames_per_s", "Frames/s", 1],
    ["frames_dropped", "Dropped", 0],
    ["detect_ms_p95", "Detect ms", 1],
    ["cpu_temp_c", "Temp °C", 1],
    ["backlog", "Backlog", 0],
  ];
  const STATES = ["online", "offline", "degraded", "stopped", "new"];

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} days`;
  }

  // A small line of the last values; no axes, the number beside it says the latest.
  function sparkline(values, label) {
    const pts = values.map((v, i) => [i, v]).filter(([, v]) => Number.isFinite(v));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 60 16");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    if (pts.length < 2) return svg;
    const lo = Math.min(...pts.map((p) => p[1]));
    const hi = Math.max(...pts.map((p) => p[1]));
    const n = values.length - 1 || 1;
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.map(([i, v]) => `${(i / n) * 60},${hi === lo ? 8 : 15 - ((v - lo) / (hi - lo)) * 14}`).join(" "));
    svg.append(line);
    return svg;
  }

  function figureCell(d, key, label, digits) {
    const latest = d.trend.length ? d.trend[d.trend.length - 1][key] : null;
    const values = d.trend.map((t) => t[key]);
    const text = Number.isFinite(latest) ? latest.toFixed(digits) : "–";
    return h("td", { class: "fig", dataset: { figure: key } }, h("span", { class: "fig-value" }, text),
      sparkline(values, `${label} of ${d.device_id}, last ${values.length} reports`));
  }

  function renderAlerts(alerts, now) {
    const ul = clear($("#alerts"));
    if (!alerts.length) {
      ul.append(h("li", { class: "empty" }, "No alerts: every device is working, or has not been in trouble for long."));
      return;
    }
    for (const a of alerts) {
      ul.append(h("li", { class: `alert alert-${a.state}`, dataset: { device: a.device_id } },
        h("strong", {}, a.device_id), ` (${a.room || "no room"}, ${a.site}) has been ${a.state} for ${duration(now - a.since_ms)}`,
        a.reason ? `: ${a.reason}` : "."));
    }
  }

  function renderDevices(devices, now) {
    const box = clear($("#devices"));
    if (!devices.length) {
      box.append(h("p", { class: "empty" }, "No device has connected yet."));
      return;
    }
    const rows = devices.map((d) => {
      const st = STATES.includes(d.state) ? d.state : "unknown";
      const models = Object.entries(d.models || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
      return h("tr", { dataset: { device: d.device_id, state: st } },
        h("th", { scope: "row" }, d.device_id, h("div", { class: "muted small" }, `${d.site} · ${d.room || "no room yet"}`)),
        h("td", {}, h("span", { class: `badge badge-${st}` }, h("span", { class: "badge-icon", "aria-hidden": "true" }), st),
          Number.isFinite(d.since_ms) ? h("div", { class: "muted small" }, `for ${duration(now - d.since_ms)}`) : null,
          d.reason ? h("div", { class: "device-reason small" }, d.reason) : null,
          d.paused ? h("div", { class: "small" }, "privacy pause") : null),
        h("td", {}, d.last_seen_ms ? A.ago(d.last_seen_ms, now) : "never"),
        h("td", { class: "release" }, d.release || "–"),
        h("td", { class: "models small" }, models || "–"),
        FIGURES.map(([key, label, digits]) => figureCell(d, key, label, digits)));
    });
    box.append(h("table", { class: "admin-table" },
      h("thead", {}, h("tr", {}, ["Device", "State", "Last seen", "Release", "Models", ...FIGURES.map((f) => f[1])]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  }

  async function load() {
    const data = await A.api("/api/fleet");
    const now = Date.now();
    $("#alert-after").textContent = duration((data.alert_after_s || 300) * 1000);
    renderAlerts(data.alerts || [], now);
    renderDevices(data.devices || [], now);
  }

  A.start(async (me) => {
    if (me.role !== "admin") {
      $("#fleet").hidden = true;
      A.showMessage("This page is for administrators and technicians. You do not have access to it.", "error");
      return;
    }
    await load();
    setInterval(() => {
      if (!document.hidden) load().then(() => A.clearMessage()).catch((err) => A.showError(err));
    }, 10000);
  });
})();
