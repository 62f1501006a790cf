// Aula dashboard: the live room view (current mood, gauges, faces, the moods of faces, voices and words apart,
// chart, devices, lesson segments).
"use strict";

(function () {
  const A = window.Aula;
  const { h, $, clear } = A;

  const MINUTES = 10;
  const STALE_MS = 30000;        // a reading older than this is shown as "last reading ... ago"
  const DEVICE_LATE_MS = 45000;  // an online device not heard from for this long is flagged
  const RESYNC_MS = 60000;       // full reload of /live (health figures, gaps), besides the event stream
  const SEGMENTS_MS = 30000;
  const HEARD_MS = 120000;       // the voices' and words' lines pool what was heard this recently
  const HEARD_MINUTES = Math.round(HEARD_MS / 60000);

  const roomId = A.roomIdFromPath();
  const state = {
    room: null,
    current: null,
    devices: new Map(), // device_id -> device
    minFaces: A.MIN_FACES_DEFAULT,
    chart: null,
    source: null,
    retryMs: 1000,
    retryTimer: null,
    denied: false,
    segments: [],
    busy: false,
    // Per line (voices, words): {t_ms, n, dist, valence, arousal, count} of recent buckets and windows that had it,
    // and what the line shows now.
    heard: { voices: { samples: [], shown: null }, words: { samples: [], shown: null } },
  };

  // ---- current mood, gauges, faces ----------------------------------------------------------------------------

  function setGauge(id, value, word) {
    const gauge = $(id);
    const marker = gauge.querySelector(".gauge-marker");
    if (Number.isFinite(value)) {
      const v = Math.max(-1, Math.min(1, value));
      marker.hidden = false;
      marker.style.left = `${((v + 1) / 2) * 100}%`;
      gauge.setAttribute("aria-valuenow", v.toFixed(2));
      gauge.setAttribute("aria-valuetext", `${word} (${v >= 0 ? "+" : ""}${v.toFixed(2)} on a scale from -1 to +1)`);
    } else {
      marker.hidden = true;
      gauge.removeAttribute("aria-valuenow");
      gauge.setAttribute("aria-valuetext", "no reading");
    }
  }

  function renderCurrent() {
    const c = state.current;
    const moodWord = $("#mood-word");
    const detail = $("#mood-detail");
    const bar = clear($("#mood-bar"));
    const hasDist = c && c.distribution && Object.keys(c.distribution).length;
    if (!c) {
      moodWord.textContent = "–";
      moodWord.className = "big-word";
      detail.textContent = "No data yet: is the device online?";
    } else if (!c.dominant || !hasDist) {
      moodWord.textContent = "Not shown";
      moodWord.className = "big-word muted";
      detail.textContent = Number.isFinite(c.faces) && c.faces < state.minFaces
        ? `Fewer than ${state.minFaces} faces are seen, so no mood is shown (privacy).`
        : "No clear reading in the latest window.";
    } else {
      const d = A.normaliseDistribution(c.distribution);
      moodWord.textContent = A.moodWord(c.dominant);
      moodWord.className = `big-word mood-${c.dominant}`;
      detail.textContent = mixDetail(d, c.dominant);
      bar.append(A.distributionBar(d, { label: "Current mood mix" }));
    }
    setGauge("#valence-gauge", c ? c.valence : NaN, A.valenceWord(c ? c.valence : NaN));
    $("#valence-word").textContent = c && Number.isFinite(c.valence) ? `The class seems ${A.valenceWord(c.valence)}` : "no reading";
    setGauge("#arousal-gauge", c ? c.arousal : NaN, A.arousalWord(c ? c.arousal : NaN));
    $("#arousal-word").textContent = c && Number.isFinite(c.arousal) ? `The class seems ${A.arousalWord(c.arousal)}` : "no reading";
    const faces = c && Number.isFinite(c.faces) ? Math.round(c.faces) : null;
    $("#faces").textContent = faces === null ? "–" : String(faces);
    $("#faces-detail").textContent = faces === null
      ? "people facing the camera"
      : faces === 1 ? "person facing the camera" : "people facing the camera";
    renderFace();
    renderStale();
  }

  function mixDetail(d, dominant) {
    const second = A.LABELS.filter((k) => k !== dominant).sort((a, b) => d[b] - d[a])[0];
    return `${A.pct(d[dominant])} of the mix` +
      (second && d[second] >= 0.1 ? `, then ${A.moodWord(second).toLowerCase()} ${A.pct(d[second])}` : "");
  }

  // ---- faces, voices and words apart --------------------------------------------------------------------------

  // "Voices in the room: calm"-style line: `text` alone, or `text` followed by the mood word of `label`.
  function sourceLine(id, text, label) {
    const line = clear($(id));
    line.className = label ? "source-line" : "source-line is-empty";
    line.append(text);
    if (label) line.append(h("span", { class: `source-word mood-${label}` }, A.moodWord(label).toLowerCase()));
  }

  function renderFace() {
    const c = state.current;
    const f = c && c.face;
    const d = f ? A.normaliseDistribution(f.distribution) : null;
    const detail = $("#face-detail");
    const bar = clear($("#face-bar"));
    $("#face-source").dataset.dominant = d && f.dominant ? f.dominant : "";
    if (d && f.dominant) {
      sourceLine("#face-line", "Faces in view: ", f.dominant);
      detail.textContent = mixDetail(d, f.dominant);
      bar.append(A.distributionBar(d, { label: "Mood mix of the faces" }));
    } else if (!c) {
      sourceLine("#face-line", "Faces in view: no reading yet");
      detail.textContent = "";
    } else if (Number.isFinite(c.faces) && c.faces < state.minFaces) {
      sourceLine("#face-line", "Faces in view: not shown");
      detail.textContent = `Fewer than ${state.minFaces} faces are seen, so their mood is not shown (privacy).`;
    } else {
      sourceLine("#face-line", "Faces in view: no clear reading");
      detail.textContent = "No mood of the faces in the latest window.";
    }
  }

  // What the microphone hears, pooled over HEARD_MS: the voices' sound and the words' mood. Each comes and goes
  // with speech, so its line shows the recent minutes rather than the latest window.
  const HEARD = {
    voices: { key: "voices", countKey: "speech_segments", render: renderVoices },
    words: { key: "words", countKey: "text_utterances", render: renderWords },
  };

  // One bucket (from /live) or one window (from the stream) as a sample; n = windows with that modality's mood.
  function heardSample(kind, item) {
    const v = item[kind.key];
    const d = v ? A.normaliseDistribution(v.distribution) : null;
    const count = item[kind.countKey];
    return {
      t_ms: item.t_ms,
      n: d ? (Number.isFinite(v.windows) && v.windows > 0 ? v.windows : 1) : 0,
      dist: d,
      valence: v ? v.valence : null,
      arousal: v ? v.arousal : null,
      count: Number.isFinite(count) ? count : 0,
    };
  }

  function setHeardFromBuckets(buckets) {
    for (const [name, kind] of Object.entries(HEARD)) {
      state.heard[name].samples = buckets.filter((b) => b && Number.isFinite(b.t_ms))
        .map((b) => heardSample(kind, b))
        .filter((s) => s.n || s.count);
    }
    renderHeard();
  }

  function addHeardWindow(w) {
    for (const [name, kind] of Object.entries(HEARD)) {
      const sample = heardSample(kind, w);
      if (sample.n || sample.count) state.heard[name].samples.push(sample);
    }
    renderHeard();
  }

  // The samples of the last HEARD_MS pooled: each window with a mood counts once.
  function mergedHeard(heard, now = Date.now()) {
    heard.samples = heard.samples.filter((s) => s.t_ms >= now - HEARD_MS);
    const dist = Object.fromEntries(A.LABELS.map((k) => [k, 0]));
    let n = 0, count = 0, vSum = 0, vN = 0, aSum = 0, aN = 0;
    for (const s of heard.samples) {
      count += s.count;
      if (!s.n) continue;
      n += s.n;
      for (const k of A.LABELS) dist[k] += s.dist[k] * s.n;
      if (Number.isFinite(s.valence)) { vSum += s.valence * s.n; vN += s.n; }
      if (Number.isFinite(s.arousal)) { aSum += s.arousal * s.n; aN += s.n; }
    }
    if (!n) return { n, count };
    for (const k of A.LABELS) dist[k] /= n;
    const dominant = A.LABELS.reduce((best, k) => (dist[k] > dist[best] ? k : best), A.LABELS[0]);
    return { n, count, dist, dominant, valence: vN ? vSum / vN : NaN, arousal: aN ? aSum / aN : NaN };
  }

  // Redraws each line only when what it shows changed (the clock tick calls this every second).
  function renderHeard() {
    for (const [name, kind] of Object.entries(HEARD)) {
      const heard = state.heard[name];
      const v = mergedHeard(heard);
      const shown = JSON.stringify(v);
      if (shown === heard.shown) continue;
      heard.shown = shown;
      kind.render(v, `in the last ${HEARD_MINUTES} minutes`);
    }
  }

  function renderVoices(v, span) {
    const detail = $("#voices-detail");
    const bar = clear($("#voices-bar"));
    $("#voices-source").dataset.dominant = v.n ? v.dominant : "";
    if (v.n) {
      sourceLine("#voices-line", "Voices in the room: ", v.dominant);
      const parts = [];
      if (Number.isFinite(v.arousal)) parts.push(`Sounding ${A.arousalWord(v.arousal)}`);
      parts.push(mixDetail(v.dist, v.dominant));
      if (v.count) parts.push(`${v.count} ${v.count === 1 ? "stretch" : "stretches"} of speech ${span}`);
      else parts.push(span);
      detail.textContent = parts.join(" · ");
      bar.append(A.distributionBar(v.dist, { label: "Mood mix of the voices" }));
    } else if (v.count) {
      sourceLine("#voices-line", "Voices heard, but no reading of their mood");
      detail.textContent = `The device sent no mood for the voices ${span}.`;
    } else {
      sourceLine("#voices-line", `No voices heard ${span}`);
      detail.textContent = "";
    }
  }

  function renderWords(v, span) {
    const detail = $("#words-detail");
    const bar = clear($("#words-bar"));
    $("#words-source").dataset.dominant = v.n ? v.dominant : "";
    if (v.n) {
      sourceLine("#words-line", "Words spoken: ", v.dominant);
      const parts = [];
      if (Number.isFinite(v.valence)) parts.push(`Reading as ${A.valenceWord(v.valence)}`);
      parts.push(mixDetail(v.dist, v.dominant));
      if (v.count) parts.push(`${v.count} ${v.count === 1 ? "utterance" : "utterances"} ${span}`);
      else parts.push(span);
      detail.textContent = parts.join(" · ");
      bar.append(A.distributionBar(v.dist, { label: "Mood mix of the words" }));
    } else if (v.count) {
      sourceLine("#words-line", "Words heard, but no reading of their mood");
      detail.textContent = `The device sent no mood for the words ${span}.`;
    } else {
      sourceLine("#words-line", `No words heard ${span}`);
      detail.textContent = "";
    }
  }

  function renderStale() {
    const el = $("#now-stale");
    const c = state.current;
    const old = c && Number.isFinite(c.t_ms) && Date.now() - c.t_ms > STALE_MS;
    el.hidden = !old;
    if (old) el.textContent = `Last reading ${A.ago(c.t_ms)}. No new data since then: is the device online?`;
    $("#room-body").classList.toggle("is-stale", Boolean(old));
  }

  // ---- devices ------------------------------------------------------------------------------------------------

  const STATE_TEXT = {
    online: "Online", offline: "Offline", degraded: "Degraded", stopped: "Stopped", new: "New", unknown: "Unknown",
  };

  function dig(obj, ...paths) {
    for (const path of paths) {
      let v = obj;
      for (const key of path.split(".")) v = v && typeof v === "object" ? v[key] : undefined;
      if (v !== undefined && v !== null) return v;
    }
    return undefined;
  }

  function fmtUptime(s) {
    if (!Number.isFinite(s)) return null;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  // The few health figures a teacher or technician cares about, when the device sent them.
  function healthFigures(hl) {
    if (!hl || typeof hl !== "object") return [];
    const out = [];
    const fps = dig(hl, "vision.frames_analysed_per_s", "frames_analysed_per_s", "fps");
    if (Number.isFinite(fps)) out.push(["Camera analysis", `${fps.toFixed(1)} frames/s`]);
    const temp = dig(hl, "host.cpu_temp_c", "cpu_temp_c");
    if (Number.isFinite(temp)) out.push(["CPU temperature", `${Math.round(temp)} °C`]);
    const load = dig(hl, "host.cpu_load_1m", "cpu_load_1m");
    const cpus = dig(hl, "host.cpu_count", "cpu_count");
    if (Number.isFinite(load)) out.push(["CPU load", Number.isFinite(cpus) ? `${load.toFixed(1)} of ${cpus} cores` : load.toFixed(1)]);
    const mem = dig(hl, "host.mem_available_mb", "mem_available_mb");
    if (Number.isFinite(mem)) out.push(["Free memory", `${Math.round(mem)} MB`]);
    const backlog = dig(hl, "mqtt.backlog", "backlog");
    if (Number.isFinite(backlog)) out.push(["Waiting to send", `${backlog} windows`]);
    const up = fmtUptime(dig(hl, "uptime_s"));
    if (up) out.push(["Running for", up]);
    if (dig(hl, "paused") === true) out.push(["Sensing", "paused on the device"]);
    return out.slice(0, 6);
  }

  function renderDevices() {
    renderPrivacy();
    const box = clear($("#devices"));
    const devices = [...state.devices.values()].sort((a, b) => String(a.device_id).localeCompare(String(b.device_id)));
    if (!devices.length) {
      box.append(h("p", { class: "empty" }, "No device is assigned to this room yet. An administrator assigns new devices on the Admin page."));
      return;
    }
    const now = Date.now();
    for (const d of devices) {
      const st = STATE_TEXT[d.state] ? d.state : "unknown";
      const late = st === "online" && Number.isFinite(d.last_seen_ms) && now - d.last_seen_ms > DEVICE_LATE_MS;
      const figures = healthFigures(d.health);
      box.append(h("article", { class: `device device-${st}`, dataset: { device: d.device_id, state: st } },
        h("div", { class: "device-head" },
          h("h3", { class: "device-name" }, d.device_id),
          h("span", { class: `badge badge-${st}` }, h("span", { class: "badge-icon", "aria-hidden": "true" }), STATE_TEXT[st])),
        d.reason ? h("p", { class: "device-reason" }, d.reason) : null,
        d.paused === true ? h("p", { class: "device-paused" }, "Privacy pause: camera and microphone closed.") : null,
        late ? h("p", { class: "device-reason" }, "Nothing received for a while.") : null,
        h("p", { class: "device-seen muted small" }, "Last seen ",
          h("time", { class: "ago", dataset: { ms: d.last_seen_ms ?? "" } }, A.ago(d.last_seen_ms, now))),
        figures.length
          ? h("dl", { class: "figures" }, figures.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))))
          : null));
    }
  }

  function tickAgo() {
    const now = Date.now();
    for (const el of document.querySelectorAll("time.ago[data-ms]")) {
      const ms = Number(el.dataset.ms);
      el.textContent = el.dataset.ms === "" ? "never" : A.ago(ms, now);
    }
    renderStale();
    renderHeard();
    renderRunningClock();
  }

  // ---- live data ----------------------------------------------------------------------------------------------

  async function loadLive() {
    const data = await A.api(`/api/rooms/${roomId}/live?minutes=${MINUTES}`);
    state.room = data.room || state.room;
    if (Number.isFinite(data.min_faces)) state.minFaces = data.min_faces;
    $("#min-faces").textContent = String(state.minFaces);
    renderRoomTitle();
    state.current = data.current || null;
    state.devices = new Map((data.devices || []).map((d) => [d.device_id, d]));
    state.chart.setBuckets(data.buckets || []);
    setHeardFromBuckets(data.buckets || []);
    renderCurrent();
    renderDevices();
  }

  function renderRoomTitle() {
    const r = state.room;
    if (!r) return;
    $("#room-title").textContent = A.roomTitle(r);
    $("#room-sub").textContent = `Site ${r.site} · room ${r.room}`;
    document.title = `${A.roomTitle(r)} (live) · Aula`;
  }

  function onWindow(ev) {
    let w;
    try {
      w = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    if (!w || !Number.isFinite(w.t_ms)) return;
    if (!state.current || !Number.isFinite(state.current.t_ms) || w.t_ms >= state.current.t_ms) {
      state.current = w;
      renderCurrent();
    }
    state.chart.addWindow(w);
    addHeardWindow(w);
    if (w.device_id) {
      const d = state.devices.get(w.device_id) || { device_id: w.device_id, state: "online", health: null };
      d.last_seen_ms = Math.max(d.last_seen_ms || 0, w.t_ms);
      if (d.state === "new" || d.state === "offline") d.state = "online";
      state.devices.set(w.device_id, d);
      renderDevices();
    }
  }

  function onStatus(ev) {
    let s;
    try {
      s = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    if (!s || !s.device_id) return;
    const d = state.devices.get(s.device_id) || { device_id: s.device_id, health: null };
    Object.assign(d, { state: s.state, reason: s.reason ?? null });
    if (typeof s.paused === "boolean") d.paused = s.paused;
    if (Number.isFinite(s.last_seen_ms)) d.last_seen_ms = s.last_seen_ms;
    state.devices.set(s.device_id, d);
    renderDevices();
  }

  // ---- privacy pause ------------------------------------------------------------------------------------------

  function renderPrivacy() {
    const devices = [...state.devices.values()];
    const paused = devices.filter((d) => d.paused === true).length;
    let text = "Sensing: no device yet";
    if (devices.length && paused === devices.length) text = devices.length === 1 ? "Sensing is paused." : `Sensing is paused on all ${devices.length} devices.`;
    else if (paused) text = `Sensing is paused on ${paused} of ${devices.length} devices.`;
    else if (devices.length) text = "Sensing is on.";
    const el = $("#privacy-state");
    el.textContent = text;
    el.dataset.paused = String(paused);
    $("#privacy-pause").hidden = !devices.length || paused === devices.length;
    $("#privacy-resume").hidden = !paused;
  }

  async function sendPrivacy(paused) {
    const area = $("#privacy-messages");
    for (const b of [$("#privacy-pause"), $("#privacy-resume")]) b.disabled = true;
    try {
      const res = await A.api(`/api/rooms/${roomId}/privacy`, { method: "POST", body: { paused } });
      const sent = (res.devices || []).filter((d) => d.sent).length;
      state.pending = new Map((res.devices || []).map((d) => [d.id, d.device_id]));
      A.showMessage(sent
        ? `${paused ? "Pause" : "Resume"} sent to ${sent} device${sent === 1 ? "" : "s"}; waiting for the answer…`
        : "No device could be reached.", sent ? "info" : "error", { area });
    } catch (err) {
      A.showError(err, area);
    } finally {
      for (const b of [$("#privacy-pause"), $("#privacy-resume")]) b.disabled = false;
    }
  }

  function onAck(ev) {
    let a;
    try {
      a = JSON.parse(ev.data);
    } catch (_) {
      return;
    }
    if (!a || !a.device_id) return;
    const d = state.devices.get(a.device_id);
    if (d) d.paused = a.paused === true;
    const verb = a.command === "pause" ? "paused" : a.command === "resume" ? "resumed" : a.command || "answered";
    const line = a.ok ? `${a.device_id}: ${verb}.` : `${a.device_id} did not do it: ${a.reason || "no reason given"}`;
    $("#privacy-answers").prepend(h("li", { class: a.ok ? "answer-ok" : "answer-refused", dataset: { device: a.device_id } }, line));
    if (state.pending && state.pending.delete(a.id) && !state.pending.size) A.clearMessage($("#privacy-messages"));
    renderDevices();
  }

  function setConn(kind, text) {
    const el = $("#conn");
    el.className = `conn conn-${kind}`;
    el.textContent = text;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.source) state.source.close();
    setConn("connecting", "connecting…");
    const es = new EventSource(`/api/rooms/${roomId}/stream`);
    state.source = es;
    let hadError = false;
    es.addEventListener("open", () => {
      setConn("live", "live");
      state.retryMs = 1000;
      // After a break, fetch what was missed.
      if (hadError) loadLive().then(() => A.clearMessage()).catch(handleLoadError);
    });
    es.addEventListener("window", onWindow);
    es.addEventListener("status", onStatus);
    es.addEventListener("ack", onAck);
    es.addEventListener("end", () => {
      // The server ended the stream: the session ended, or this room was taken away. Do not let the browser
      // reconnect blindly; ask why, which leads to the login page or to the "no access" message.
      es.close();
      setConn("off", "not connected");
      A.api("/api/me").then(() => loadLive()).then(() => {
        if (!state.denied) connect();
      }).catch(handleLoadError);
    });
    es.addEventListener("error", () => {
      hadError = true;
      if (es.readyState === EventSource.CONNECTING) {
        setConn("reconnecting", "reconnecting…");
        return; // the browser retries by itself
      }
      // CLOSED: the server refused (for example the session ended). Find out why, then retry with back-off.
      setConn("reconnecting", "reconnecting…");
      es.close();
      A.api("/api/me").then(() => loadLive()).then(() => A.clearMessage()).catch(handleLoadError).finally(() => {
        if (state.denied) return;
        state.retryTimer = setTimeout(connect, state.retryMs);
        state.retryMs = Math.min(30000, state.retryMs * 2);
      });
    });
  }

  function handleLoadError(err) {
    if (err instanceof A.ApiError && err.status === 401) return; // going to the login page
    if (err instanceof A.ApiError && (err.status === 403 || err.status === 404)) {
      denyRoom(err.status === 403 ? "You do not have access to this room." : "This room does not exist.");
      return;
    }
    A.showError(err);
  }

  function denyRoom(text) {
    state.denied = true;
    if (state.source) state.source.close();
    clearTimeout(state.retryTimer);
    setConn("off", "not connected");
    $("#room-body").hidden = true;
    $("#report-link").hidden = true;
    A.showMessage(text, "error");
    $("#messages").append(h("p", {}, h("a", { href: "/" }, "Back to my rooms")));
  }

  // ---- segments -----------------------------------------------------------------------------------------------

  async function loadSegments() {
    const list = await A.api(`/api/rooms/${roomId}/segments`);
    state.segments = Array.isArray(list) ? list : [];
    renderSegments();
  }

  function renderSegments() {
    const running = state.segments.filter((s) => s.end_ms === null || s.end_ms === undefined);
    const done = state.segments.filter((s) => s.end_ms !== null && s.end_ms !== undefined)
      .sort((a, b) => b.start_ms - a.start_ms);
    const box = clear($("#seg-running"));
    for (const s of running) {
      box.append(h("div", { class: "running", dataset: { segment: s.id } },
        h("p", { class: "running-title" }, h("span", { class: "rec", "aria-hidden": "true" }), "Running: ",
          h("strong", { class: "seg-name" }, s.name)),
        h("p", { class: "muted small" }, `Started ${A.clock(s.start_ms)} · `,
          h("span", { class: "running-clock", dataset: { start: s.start_ms } }, A.duration(Date.now() - s.start_ms))),
        h("button", {
          type: "button", class: "btn btn-stop", dataset: { stop: s.id },
          "aria-label": `Stop ${s.name}`, onclick: () => stopSegment(s),
        }, "Stop")));
    }
    const list = clear($("#seg-list"));
    if (!done.length) {
      list.append(h("li", { class: "empty" }, "No finished parts yet."));
    }
    for (const s of done.slice(0, 8)) list.append(segmentItem(s));
    if (done.length > 8) {
      list.append(h("li", { class: "muted small" }, `and ${done.length - 8} more in the `,
        h("a", { href: `/rooms/${roomId}/report` }, "lesson report"), "."));
    }
  }

  function segmentItem(s) {
    const dist = A.normaliseDistribution(s.distribution);
    return h("li", { class: "seg", dataset: { segment: s.id } },
      h("div", { class: "seg-head" },
        h("strong", { class: "seg-name" }, s.name),
        h("span", { class: "muted small" }, `${A.clock(s.start_ms)}–${A.clock(s.end_ms)} · ${A.duration(s.end_ms - s.start_ms)}`)),
      dist
        ? h("p", { class: "seg-mood" }, `Mostly ${A.moodWord(s.dominant).toLowerCase()}`,
          h("span", { class: "muted" }, ` · ${A.valenceWord(s.valence)}, ${A.arousalWord(s.arousal)}`))
        : h("p", { class: "seg-mood muted" }, "No mood data for this part."),
      dist ? A.distributionBar(dist, { label: `Mood mix during ${s.name}` }) : null);
  }

  function renderRunningClock() {
    const now = Date.now();
    for (const el of document.querySelectorAll(".running-clock[data-start]")) {
      el.textContent = A.duration(now - Number(el.dataset.start));
    }
  }

  async function startSegment(ev) {
    ev.preventDefault();
    const input = $("#seg-name");
    const name = input.value.trim();
    const area = $("#seg-messages");
    if (!name) {
      A.showMessage("Type a name first, for example \u201cQuestion 3\u201d.", "error", { area });
      input.focus();
      return;
    }
    if (state.busy) return;
    state.busy = true;
    $("#seg-start").disabled = true;
    try {
      await A.api(`/api/rooms/${roomId}/segments`, { method: "POST", body: { name } });
      input.value = "";
      A.clearMessage(area);
      await loadSegments();
    } catch (err) {
      A.showError(err, area);
    } finally {
      state.busy = false;
      $("#seg-start").disabled = false;
    }
  }

  async function stopSegment(s) {
    const area = $("#seg-messages");
    const btn = document.querySelector(`button[data-stop="${CSS.escape(String(s.id))}"]`);
    if (btn) btn.disabled = true;
    try {
      await A.api(`/api/rooms/${roomId}/segments/${encodeURIComponent(s.id)}/stop`, { method: "POST", body: {} });
      A.clearMessage(area);
      await loadSegments();
    } catch (err) {
      A.showError(err, area);
      if (btn) btn.disabled = false;
    }
  }

  // ---- start --------------------------------------------------------------------------------------------------

  A.start(async (me) => {
    if (roomId === null) {
      denyRoom("This address does not name a room.");
      return;
    }
    $("#report-link").href = `/rooms/${roomId}/report`;
    $("#chart-minutes").textContent = String(MINUTES);
    const known = (me.rooms || []).find((r) => r.id === roomId);
    if (known) {
      state.room = known;
      renderRoomTitle();
    }
    state.chart = new A.EmotionChart($("#chart"), { minutes: MINUTES, title: "Class mood mix" });
    renderCurrent();
    renderHeard();
    renderSegments();
    $("#seg-form").addEventListener("submit", startSegment);
    $("#privacy-pause").addEventListener("click", () => sendPrivacy(true));
    $("#privacy-resume").addEventListener("click", () => sendPrivacy(false));
    try {
      await loadLive();
    } catch (err) {
      handleLoadError(err);
      if (state.denied || (err instanceof A.ApiError && err.status === 401)) return;
    }
    connect();
    loadSegments().catch((err) => A.showError(err, $("#seg-messages")));
    setInterval(tickAgo, 1000);
    setInterval(() => {
      if (!state.denied && !document.hidden) loadLive().catch(handleLoadError);
    }, RESYNC_MS);
    setInterval(() => {
      if (!state.denied && !document.hidden) loadSegments().catch(() => {});
    }, SEGMENTS_MS);
  });
})();
