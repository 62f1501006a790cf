// Aula dashboard: the teacher's rooms, each with its current mood and device status.
"use strict";

(function () {
  const A = window.Aula;
  const { h, $, clear } = A;

  const REFRESH_MS = 15000;
  const STALE_MS = 60000;
  const STATE_TEXT = { online: "Online", offline: "Offline", degraded: "Degraded", stopped: "Stopped", new: "New" };

  let rooms = [];

  async function loadRooms(me) {
    try {
      const list = await A.api("/api/rooms");
      return Array.isArray(list) ? list : [];
    } catch (err) {
      if (err instanceof A.ApiError && err.status === 403) {
        A.showMessage("You do not have access to any rooms. Ask your administrator for access.", "error");
        return [];
      }
      if (err instanceof A.ApiError && err.status !== 401 && me && Array.isArray(me.rooms)) {
        A.showError(err);
        return me.rooms; // fall back on the list the session already has
      }
      throw err;
    }
  }

  function card(room, live, error) {
    const title = A.roomTitle(room);
    const body = [];
    const c = live && live.current;
    if (error) {
      body.push(h("p", { class: "room-mood muted" }, "Unavailable"), h("p", { class: "small" }, error));
    } else if (!c) {
      const devs = (live && live.devices) || [];
      body.push(h("p", { class: "room-mood big-word muted" }, "No data yet"),
        devs.length ? h("p", { class: "muted small" }, "Is the device online and facing the class?") : null);
    } else {
      const stale = Number.isFinite(c.t_ms) && Date.now() - c.t_ms > STALE_MS;
      const word = c.dominant ? A.moodWord(c.dominant) : "Not shown";
      body.push(h("p", { class: `room-mood big-word ${c.dominant && !stale ? "mood-" + c.dominant : "muted"}` }, word));
      const facts = [];
      if (Number.isFinite(c.faces)) {
        const n = Math.round(c.faces);
        facts.push(h("span", {}, `${n} ${n === 1 ? "face" : "faces"}`));
      }
      if (Number.isFinite(c.valence)) facts.push(h("span", {}, A.valenceWord(c.valence)));
      if (Number.isFinite(c.arousal)) facts.push(h("span", {}, A.arousalWord(c.arousal)));
      facts.push(h("span", {}, stale ? `last reading ${A.ago(c.t_ms)}` : `updated ${A.ago(c.t_ms)}`));
      body.push(h("p", { class: "room-facts" }, facts));
      const dist = A.normaliseDistribution(c.distribution);
      if (dist && !stale) body.push(A.distributionBar(dist, { label: `Current mood mix in ${title}` }));
    }
    const devs = (live && live.devices) || [];
    const devList = devs.length
      ? h("ul", { class: "room-devices", "aria-label": "Devices" }, devs.map((d) => {
        const st = STATE_TEXT[d.state] ? d.state : "unknown";
        return h("li", {}, h("span", { class: `badge badge-${st}`, title: d.reason || "" },
          h("span", { class: "badge-icon", "aria-hidden": "true" }),
          `${d.device_id}: ${STATE_TEXT[st] || "Unknown"}${d.reason ? ` (${d.reason})` : ""}`));
      }))
      : (live ? h("p", { class: "muted small" }, "No device assigned yet.") : null);
    return h("article", { class: "panel room-card", dataset: { room: room.id } },
      h("h2", {}, h("a", { href: `/rooms/${room.id}` }, title)),
      h("p", { class: "muted small" }, `Site ${room.site} · room ${room.room}`),
      body, devList,
      h("div", { class: "room-links" },
        h("a", { class: "btn btn-primary", href: `/rooms/${room.id}` }, "Open live view"),
        h("a", { class: "btn btn-secondary", href: `/rooms/${room.id}/report` }, "Lesson report")));
  }

  async function refresh() {
    const results = await Promise.all(rooms.map(async (room) => {
      try {
        return [room, await A.api(`/api/rooms/${room.id}/live?minutes=1`), null];
      } catch (err) {
        if (err instanceof A.ApiError && err.status === 401) throw err;
        const msg = err instanceof A.ApiError && err.status === 403 ? "You do not have access to this room." : err.message;
        return [room, null, msg];
      }
    }));
    const box = clear($("#rooms"));
    for (const [room, live, error] of results) box.append(card(room, live, error));
    box.setAttribute("aria-busy", "false");
    $("#refreshed").textContent = `Updated ${A.clockSeconds(Date.now())}`;
    if (results.some(([, live]) => live)) A.clearMessage();
  }

  A.start(async (me) => {
    rooms = await loadRooms(me);
    const box = $("#rooms");
    if (!rooms.length) {
      clear(box).append(h("div", { class: "panel" },
        h("h2", {}, "No rooms yet"),
        h("p", {}, me.role === "admin"
          ? ["Add a room and assign a device on the ", h("a", { href: "/admin" }, "Admin page"), "."]
          : "Ask your administrator to give you access to your classroom.")));
      box.setAttribute("aria-busy", "false");
      return;
    }
    await refresh();
    setInterval(() => {
      if (document.hidden) return;
      refresh().catch((err) => {
        if (!(err instanceof A.ApiError && err.status === 401)) A.showError(err);
      });
    }, REFRESH_MS);
  });
})();
