// Aula dashboard: a small stacked-area chart of the 7-label mood mix over the last minutes, on <canvas>.
// Accessible: the canvas has role=img and a live text summary, a legend names every colour, and the same
// figures are available as a table. Colours come from Aula.COLORS (Okabe-Ito, colour-blind friendly).
"use strict";

(function () {
  const { LABELS, COLORS, h, clear, moodWord, pct, clock, clockSeconds } = window.Aula;
  const normalise = window.Aula.normaliseDistribution;

  const DEFAULT_BUCKET_MS = 10000;
  const TABLE_ROWS = 30;

  function median(xs) {
    if (!xs.length) return NaN;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.floor(s.length / 2)];
  }

  class EmotionChart {
    // `root` is an element that the chart fills: canvas, legend, and a table under a <details>.
    constructor(root, { minutes = 10, title = "Class mood mix" } = {}) {
      this.root = root;
      this.minutes = minutes;
      this.title = title;
      this.points = []; // [{t_ms, dist|null, windows, faces}], oldest first
      this.bucketMs = DEFAULT_BUCKET_MS;
      this.updates = 0;
      this.now = () => Date.now();

      clear(root);
      root.classList.add("chart");
      this.canvas = h("canvas", { class: "chart-canvas", role: "img", "aria-label": `${title}: no data yet` });
      this.canvas.textContent = "A chart of how the class mood has changed over the last minutes.";
      this.empty = h("p", { class: "chart-empty" }, "No data yet: is the device online?");
      this.frame = h("div", { class: "chart-frame" }, this.canvas, this.empty);
      this.summary = h("p", { class: "visually-hidden", "aria-live": "off" });
      this.tbody = h("tbody");
      this.details = h("details", { class: "chart-table" },
        h("summary", {}, "Show the chart as a table"),
        h("div", { class: "table-scroll" },
          h("table", {},
            h("caption", { class: "visually-hidden" }, `${title}, newest first`),
            h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Time"), h("th", { scope: "col" }, "Faces"),
              LABELS.map((k) => h("th", { scope: "col" }, moodWord(k))))),
            this.tbody)));
      this.details.addEventListener("toggle", () => this.details.open && this.renderTable());
      root.append(this.frame, Aula.legend("chart-legend"), this.summary, this.details);

      this.ro = new ResizeObserver(() => this.draw());
      this.ro.observe(this.frame);
      this.root.dataset.points = "0";
      this.root.dataset.updated = "0";
      // Redraw every few seconds so the time axis moves on even when no data comes.
      this.tick = setInterval(() => this.draw(), 5000);
    }

    // Replace all points (from /api/rooms/{id}/live buckets).
    setBuckets(buckets) {
      const pts = (buckets || [])
        .filter((b) => b && Number.isFinite(b.t_ms))
        .map((b) => ({ t_ms: b.t_ms, dist: normalise(b.distribution), windows: b.windows || 1, faces: b.faces }))
        .sort((a, b) => a.t_ms - b.t_ms);
      const diffs = [];
      for (let i = 1; i < pts.length; i++) diffs.push(pts[i].t_ms - pts[i - 1].t_ms);
      const m = median(diffs);
      if (Number.isFinite(m) && m > 0) this.bucketMs = Math.min(60000, Math.max(1000, m));
      this.points = pts;
      this.changed();
    }

    // Add one live window (from the event stream): merged into the latest bucket when it falls inside it.
    addWindow(w) {
      if (!w || !Number.isFinite(w.t_ms)) return;
      const dist = normalise(w.distribution);
      const last = this.points[this.points.length - 1];
      if (last && w.t_ms >= last.t_ms && w.t_ms < last.t_ms + this.bucketMs) {
        if (dist) {
          const n = last.dist ? last.windows : 0;
          const merged = {};
          for (const k of LABELS) merged[k] = ((last.dist ? last.dist[k] * n : 0) + dist[k]) / (n + 1);
          last.dist = merged;
          last.windows = n + 1;
        }
        if (Number.isFinite(w.faces)) last.faces = Math.max(last.faces || 0, w.faces);
      } else if (last && w.t_ms < last.t_ms) {
        return; // late window from before the latest bucket: the next full reload includes it
      } else {
        const t = last ? last.t_ms + Math.floor((w.t_ms - last.t_ms) / this.bucketMs) * this.bucketMs : w.t_ms;
        this.points.push({ t_ms: t, dist, windows: 1, faces: w.faces });
      }
      this.changed();
    }

    changed() {
      const cutoff = this.latestTime() - this.minutes * 60000 - this.bucketMs;
      while (this.points.length && this.points[0].t_ms < cutoff) this.points.shift();
      this.updates += 1;
      this.root.dataset.points = String(this.points.length);
      this.root.dataset.updated = String(this.updates);
      this.describe();
      this.draw();
      if (this.details.open) this.renderTable();
    }

    latestTime() {
      const last = this.points[this.points.length - 1];
      return Math.max(this.now(), last ? last.t_ms + this.bucketMs : 0);
    }

    describe() {
      const withData = this.points.filter((p) => p.dist);
      this.empty.hidden = withData.length > 0;
      let text;
      if (!withData.length) {
        text = `${this.title}: no data yet.`;
      } else {
        const last = withData[withData.length - 1];
        const top = LABELS.filter((k) => last.dist[k] >= 0.05).sort((a, b) => last.dist[b] - last.dist[a])
          .map((k) => `${moodWord(k).toLowerCase()} ${pct(last.dist[k])}`).join(", ");
        text = `${this.title} over the last ${this.minutes} minutes, ${withData.length} time points. ` +
          `Latest at ${clockSeconds(last.t_ms)}: ${top}.`;
      }
      this.canvas.setAttribute("aria-label", text);
      this.summary.textContent = text;
    }

    renderTable() {
      clear(this.tbody);
      const rows = this.points.slice(-TABLE_ROWS).reverse();
      if (!rows.length) {
        this.tbody.append(h("tr", {}, h("td", { colspan: LABELS.length + 2 }, "No data yet.")));
        return;
      }
      for (const p of rows) {
        this.tbody.append(h("tr", {},
          h("th", { scope: "row" }, clockSeconds(p.t_ms)),
          h("td", {}, Number.isFinite(p.faces) ? String(Math.round(p.faces * 10) / 10) : "–"),
          LABELS.map((k) => h("td", {}, p.dist ? pct(p.dist[k]) : "–"))));
      }
    }

    draw() {
      const canvas = this.canvas;
      const rect = this.frame.getBoundingClientRect();
      const cssW = Math.max(200, Math.floor(rect.width));
      const cssH = Math.max(120, Math.floor(rect.height));
      const dpr = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
        canvas.width = Math.round(cssW * dpr);
        canvas.height = Math.round(cssH * dpr);
      }
      const ctx = canvas.getContext("2d");
      if (!ctx) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, cssW, cssH);

      const styles = getComputedStyle(this.root);
      const ink = styles.getPropertyValue("--ink").trim() || "#222";
      const muted = styles.getPropertyValue("--muted").trim() || "#666";
      const grid = styles.getPropertyValue("--grid").trim() || "#ddd";
      const font = `12px ${styles.fontFamily || "sans-serif"}`;

      const pad = { l: 40, r: 10, t: 8, b: 22 };
      const w = cssW - pad.l - pad.r;
      const hgt = cssH - pad.t - pad.b;
      const t1 = this.latestTime();
      const t0 = t1 - this.minutes * 60000;
      const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * w;
      const y = (p) => pad.t + (1 - p) * hgt;

      // Grid and y axis (share of faces, 0 to 100 %).
      ctx.font = font;
      ctx.lineWidth = 1;
      ctx.strokeStyle = grid;
      ctx.fillStyle = muted;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const p of [0, 0.25, 0.5, 0.75, 1]) {
        ctx.beginPath();
        ctx.moveTo(pad.l, Math.round(y(p)) + 0.5);
        ctx.lineTo(pad.l + w, Math.round(y(p)) + 0.5);
        ctx.stroke();
        if (p === 0 || p === 0.5 || p === 1) ctx.fillText(`${p * 100}%`, pad.l - 6, y(p));
      }

      // Time axis: a tick per minute (or every 2, 5 ... minutes when the labels would not fit).
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      const labelW = ctx.measureText(clock(t1)).width + 14;
      const nowW = ctx.measureText("now").width;
      const stepMin = [1, 2, 5, 10, 15, 30, 60].find((s) => w / (this.minutes / s) >= labelW) || 60;
      const step = stepMin * 60000;
      for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
        const xx = Math.round(x(t)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(xx, pad.t + hgt);
        ctx.lineTo(xx, pad.t + hgt + 4);
        ctx.stroke();
        if (xx - labelW / 2 > pad.l - 20 && xx + labelW / 2 < pad.l + w - nowW - 2) ctx.fillText(clock(t), xx, pad.t + hgt + 6);
      }
      ctx.textAlign = "right";
      ctx.fillStyle = ink;
      ctx.fillText("now", pad.l + w, pad.t + hgt + 6);

      // Stacked areas: runs of consecutive points with data; a gap longer than 2.5 buckets breaks a run.
      const runs = [];
      let run = [];
      let prev = null;
      for (const p of this.points) {
        if (p.t_ms + this.bucketMs < t0) continue;
        const gap = prev && p.t_ms - prev.t_ms > 2.5 * this.bucketMs;
        if (!p.dist || gap) {
          if (run.length) runs.push(run);
          run = [];
        }
        if (p.dist) run.push(p);
        prev = p;
      }
      if (run.length) runs.push(run);

      ctx.save();
      ctx.beginPath();
      ctx.rect(pad.l, pad.t, w, hgt);
      ctx.clip();
      for (const r of runs) {
        // Each point covers its bucket [t, t + bucket); a lone point becomes a bar of that width.
        // Inside a run the bands join bucket centres; the outer edges stay square.
        const pts = r.length > 1
          ? [[x(r[0].t_ms), r[0]], ...r.map((p) => [x(p.t_ms + this.bucketMs / 2), p]),
            [x(r[r.length - 1].t_ms + this.bucketMs), r[r.length - 1]]]
          : [[x(r[0].t_ms), r[0]], [x(r[0].t_ms + this.bucketMs), r[0]]];
        const lower = pts.map(() => 0);
        for (const k of LABELS) {
          const upper = pts.map(([, p], i) => lower[i] + p.dist[k]);
          ctx.beginPath();
          pts.forEach(([xx], i) => (i ? ctx.lineTo(xx, y(upper[i])) : ctx.moveTo(xx, y(upper[i]))));
          for (let i = pts.length - 1; i >= 0; i--) ctx.lineTo(pts[i][0], y(lower[i]));
          ctx.closePath();
          ctx.fillStyle = COLORS[k];
          ctx.fill();
          // A thin white edge between bands helps tell neighbouring colours apart.
          ctx.strokeStyle = "rgba(255,255,255,0.7)";
          ctx.lineWidth = 0.75;
          ctx.beginPath();
          pts.forEach(([xx], i) => (i ? ctx.lineTo(xx, y(upper[i])) : ctx.moveTo(xx, y(upper[i]))));
          ctx.stroke();
          for (let i = 0; i < upper.length; i++) lower[i] = upper[i];
        }
      }
      ctx.restore();

      // Axis line last, on top of the areas.
      ctx.strokeStyle = muted;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(pad.l, pad.t + hgt + 0.5);
      ctx.lineTo(pad.l + w, pad.t + hgt + 0.5);
      ctx.stroke();
    }

    destroy() {
      clearInterval(this.tick);
      this.ro.disconnect();
    }
  }

  window.Aula.EmotionChart = EmotionChart;
})();
