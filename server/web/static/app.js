// Aula dashboard: shared helpers (fetch with CSRF, errors, DOM building, labels and colours).
// Plain modern JavaScript, no build step, no inline scripts: every page loads this file first.
"use strict";

(function () {
  // The seven labels, in the fixed order used by every chart, legend and table.
  const LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"];

  // Okabe-Ito palette (safe for the common colour-vision deficiencies); the same colour for a label everywhere.
  const COLORS = {
    angry: "#D55E00",    // vermillion
    disgust: "#009E73",  // bluish green
    fear: "#CC79A7",     // reddish purple
    happy: "#F0E442",    // yellow
    neutral: "#BBBBBB",  // grey
    sad: "#0072B2",      // blue
    surprise: "#E69F00", // orange
  };

  // Words a teacher reads at a glance.
  const WORDS = {
    angry: "Angry",
    disgust: "Disgusted",
    fear: "Anxious",
    happy: "Happy",
    neutral: "Neutral",
    sad: "Sad",
    surprise: "Surprised",
  };

  const MIN_FACES_DEFAULT = 3;

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.body = body;
    }
  }

  let me = null; // the /api/me answer, cached for the page's lifetime
  let csrf = null;

  function loginUrl() {
    const here = location.pathname + location.search;
    return "/login" + (here && here !== "/" && here !== "/login" ? "?next=" + encodeURIComponent(here) : "");
  }

  function goToLogin() {
    location.assign(loginUrl());
  }

  function detailOf(body, fallback) {
    if (body && typeof body === "object") {
      const d = body.detail ?? body.error ?? body.message;
      if (typeof d === "string") return d;
      if (Array.isArray(d) && d.length && d[0] && typeof d[0].msg === "string") return d.map((x) => x.msg).join("; ");
    }
    if (typeof body === "string" && body.trim() && body.length < 300) return body.trim();
    return fallback;
  }

  // fetch() wrapper: JSON in and out, CSRF header on every non-GET, 401 -> login page (unless told not to).
  async function api(path, { method = "GET", body, redirectOn401 = true, timeoutMs = 15000 } = {}) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (method !== "GET" && method !== "HEAD") {
      headers["Content-Type"] = "application/json";
      if (csrf) headers["X-CSRF-Token"] = csrf;
      init.body = JSON.stringify(body ?? {});
    }
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    init.signal = ctrl.signal;
    let res;
    try {
      res = await fetch(path, init);
    } catch (err) {
      const msg = err && err.name === "AbortError"
        ? "The server took too long to answer. Check the network and try again."
        : "Cannot reach the Aula server. Check the network connection; the page will keep trying.";
      throw new ApiError(0, msg);
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    const type = res.headers.get("Content-Type") || "";
    try {
      data = type.includes("json") ? await res.json() : await res.text();
    } catch (_) {
      data = null;
    }
    if (res.status === 401 && redirectOn401) {
      goToLogin();
      throw new ApiError(401, "Your session has ended. Please log in again.", data);
    }
    if (!res.ok) {
      let msg;
      if (res.status === 401) msg = detailOf(data, "Wrong user name or password.");
      else if (res.status === 403) msg = detailOf(data, "You do not have access to this.");
      else if (res.status === 404) msg = detailOf(data, "Not found.");
      else if (res.status >= 500) msg = `The server had a problem (${res.status}). Try again in a moment.`;
      else msg = detailOf(data, `The request failed (${res.status}).`);
      throw new ApiError(res.status, msg, data);
    }
    return data;
  }

  async function loadMe() {
    me = await api("/api/me");
    csrf = me && me.csrf ? me.csrf : null;
    return me;
  }

  // Build DOM without innerHTML: h("div", {class: "x", dataset: {a: 1}, onclick: fn}, child, "text").
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      el.setAttribute(k, String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function $(sel, root = document) {
    return root.querySelector(sel);
  }

  // Page-level message area (role=alert for errors, role=status for information).
  function showMessage(text, kind = "error", { area } = {}) {
    const box = area || $("#messages");
    if (!box) return;
    clear(box);
    if (!text) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.className = "messages " + kind;
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.append(h("p", {}, text));
  }

  function showError(err, area) {
    const text = err instanceof ApiError || (err && err.message) ? err.message : String(err);
    showMessage(text, "error", { area });
  }

  function clearMessage(area) {
    showMessage("", "error", { area });
  }

  // "12 s ago", "3 min ago", "2 h ago", or a date for older times.
  function ago(ms, now = Date.now()) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "never";
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 3) return "just now";
    if (s < 60) return `${s} s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ago`;
    const hrs = Math.floor(m / 60);
    if (hrs < 24) return `${hrs} h ${m % 60} min ago`;
    return new Date(ms).toLocaleString();
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function clockSeconds(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function duration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "";
    const s = Math.round(ms / 1000);
    const hrs = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (hrs) return `${hrs} h ${m} min`;
    if (m) return `${m} min ${String(sec).padStart(2, "0")} s`;
    return `${sec} s`;
  }

  function pct(p) {
    return Number.isFinite(p) ? `${Math.round(p * 100)}%` : "–";
  }

  function moodWord(label) {
    return WORDS[label] || (label ? String(label) : "Unclear");
  }

  // Valence and arousal are on [-1, 1]; these words go with the gauges.
  function valenceWord(v) {
    if (!Number.isFinite(v)) return "no reading";
    if (v <= -0.5) return "unpleasant";
    if (v <= -0.15) return "somewhat unpleasant";
    if (v < 0.15) return "neither pleasant nor unpleasant";
    if (v < 0.5) return "somewhat pleasant";
    return "pleasant";
  }

  function arousalWord(a) {
    if (!Number.isFinite(a)) return "no reading";
    if (a <= -0.5) return "calm";
    if (a <= -0.15) return "fairly calm";
    if (a < 0.15) return "neither calm nor excited";
    if (a < 0.5) return "fairly lively";
    return "excited";
  }

  // Normalise a distribution over the 7 labels (missing labels count as 0); null when there is none.
  function normalise(dist) {
    if (!dist || typeof dist !== "object") return null;
    const out = {};
    let sum = 0;
    for (const k of LABELS) {
      const v = Number(dist[k]);
      out[k] = Number.isFinite(v) && v > 0 ? v : 0;
      sum += out[k];
    }
    if (sum <= 0) return null;
    for (const k of LABELS) out[k] /= sum;
    return out;
  }

  // A small horizontal stacked bar of one distribution, with a text alternative.
  function distributionBar(dist, { label = "Mood mix" } = {}) {
    const parts = LABELS.filter((k) => dist && dist[k] > 0);
    const desc = dist
      ? LABELS.filter((k) => dist[k] >= 0.005)
        .sort((a, b) => dist[b] - dist[a])
        .map((k) => `${moodWord(k).toLowerCase()} ${pct(dist[k])}`).join(", ")
      : "no data";
    const root = svg("svg", {
      class: "distbar", viewBox: "0 0 100 10", preserveAspectRatio: "none", role: "img",
      "aria-label": `${label}: ${desc}`,
    });
    root.append(svg("title", {}, `${label}: ${desc}`));
    let x = 0;
    for (const k of parts) {
      const w = dist[k] * 100;
      root.append(svg("rect", { x: x.toFixed(3), y: 0, width: w.toFixed(3), height: 10, fill: COLORS[k] }));
      x += w;
    }
    if (!parts.length) root.append(svg("rect", { x: 0, y: 0, width: 100, height: 10, class: "distbar-empty" }));
    return root;
  }

  function legend(extraClass = "") {
    return h("ul", { class: "legend " + extraClass, "aria-label": "Colour key" },
      LABELS.map((k) => h("li", {}, h("span", { class: `swatch swatch-${k}`, "aria-hidden": "true" }), moodWord(k))));
  }

  // The header bar: brand, navigation, who is logged in, log out.
  function renderHeader(user) {
    const nav = $("#nav");
    if (!nav) return;
    clear(nav);
    nav.append(h("a", { href: "/" }, "My rooms"));
    if (user && user.role === "admin") nav.append(h("a", { href: "/admin" }, "Admin"), h("a", { href: "/fleet" }, "Fleet"));
    if (user && user.role !== "token") nav.append(h("a", { href: "/account" }, "My account"));
    const who = $("#who");
    if (who && user) {
      clear(who);
      who.append(
        h("span", { class: "who-name" }, user.username, user.role ? h("span", { class: "muted" }, ` (${user.role})`) : null),
        h("button", { type: "button", class: "btn btn-quiet", id: "logout", onclick: logout }, "Log out"),
      );
    }
    for (const a of nav.querySelectorAll("a")) {
      if (a.getAttribute("href") === location.pathname) a.setAttribute("aria-current", "page");
    }
  }

  async function logout() {
    try {
      await api("/api/logout", { method: "POST", redirectOn401: false });
    } catch (_) {
      // logged out anyway from the page's point of view
    }
    location.assign("/login");
  }

  // Start a page: load /api/me, draw the header, then call `main(me)`; errors end up in #messages.
  function start(main) {
    const run = async () => {
      try {
        const user = await loadMe();
        renderHeader(user);
        await main(user);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return; // redirecting
        showError(err);
      }
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
    else run();
  }

  function roomIdFromPath() {
    const m = location.pathname.match(/^\/rooms\/(\d+)(?:\/|$)/);
    return m ? Number(m[1]) : null;
  }

  function roomTitle(room) {
    if (!room) return "Room";
    return room.name || `${room.site} / ${room.room}`;
  }

  window.Aula = {
    LABELS, COLORS, WORDS, MIN_FACES_DEFAULT, ApiError,
    api, loadMe, get me() { return me; }, get csrf() { return csrf; },
    h, svg, clear, $, showMessage, showError, clearMessage, goToLogin,
    ago, clock, clockSeconds, duration, pct, moodWord, valenceWord, arousalWord,
    distributionBar, legend, normaliseDistribution: normalise, renderHeader, start, roomIdFromPath, roomTitle,
  };
})();
