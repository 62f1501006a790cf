// Aula dashboard: the lesson report (segments with their mood mix; CSV export).
"use strict";

(function () {
  const A = window.Aula;
  const { h, $, clear } = A;

  const roomId = A.roomIdFromPath();

  function fmt(v, digits = 2) {
    return Number.isFinite(v) ? `${v >= 0 ? "+" : ""}${v.toFixed(digits)}` : "–";
  }

  function segmentCard(s) {
    const dist = A.normaliseDistribution(s.distribution);
    const running = s.end_ms === null || s.end_ms === undefined;
    const end = running ? Date.now() : s.end_ms;
    const mix = dist
      ? A.LABELS.filter((k) => dist[k] >= 0.01).sort((a, b) => dist[b] - dist[a])
        .map((k) => `${A.moodWord(k)} ${A.pct(dist[k])}`).join(" · ")
      : "";
    return h("article", { class: "card report-seg", dataset: { segment: s.id } },
      h("div", { class: "seg-head" },
        h("h2", { class: "seg-name" }, s.name, running ? h("span", { class: "badge badge-offline" }, " running") : null),
        h("span", { class: "muted" },
          `${new Date(s.start_ms).toLocaleDateString()} ${A.clock(s.start_ms)}–${running ? "now" : A.clock(s.end_ms)}` +
          ` · ${A.duration(end - s.start_ms)}`)),
      dist ? A.distributionBar(dist, { label: `Mood mix during ${s.name}` })
        : h("p", { class: "empty" }, "No mood data for this part (no device data, or fewer faces than the minimum)."),
      mix ? h("p", { class: "report-mix" }, mix) : null,
      h("dl", { class: "report-facts" },
        h("div", {}, h("dt", {}, "Main mood"), h("dd", {}, s.dominant ? A.moodWord(s.dominant) : "–")),
        h("div", {}, h("dt", {}, "Pleasantness"), h("dd", {}, Number.isFinite(s.valence) ? `${A.valenceWord(s.valence)} (${fmt(s.valence)})` : "–")),
        h("div", {}, h("dt", {}, "Energy"), h("dd", {}, Number.isFinite(s.arousal) ? `${A.arousalWord(s.arousal)} (${fmt(s.arousal)})` : "–")),
        h("div", {}, h("dt", {}, "Faces (average)"), h("dd", {}, Number.isFinite(s.faces_mean) ? s.faces_mean.toFixed(1) : "–")),
        h("div", {}, h("dt", {}, "Windows"), h("dd", {}, Number.isFinite(s.windows) ? String(s.windows) : "–"))));
  }

  async function load() {
    const list = await A.api(`/api/rooms/${roomId}/segments`);
    const segs = (Array.isArray(list) ? list : []).sort((a, b) => a.start_ms - b.start_ms);
    const box = clear($("#report"));
    box.setAttribute("aria-busy", "false");
    if (!segs.length) {
      box.append(h("p", { class: "empty" },
        "No parts of the lesson were marked yet. Start one on the ", h("a", { href: `/rooms/${roomId}` }, "live view"),
        ", for example \u201cQuestion 3\u201d or \u201cGroup work\u201d."));
      return;
    }
    for (const s of segs) box.append(segmentCard(s));
  }

  A.start(async (me) => {
    if (roomId === null) {
      A.showMessage("This address does not name a room.", "error");
      return;
    }
    const room = (me.rooms || []).find((r) => r.id === roomId);
    if (room) {
      $("#room-title").textContent = `Lesson report: ${A.roomTitle(room)}`;
      $("#room-sub").textContent = `Site ${room.site} · room ${room.room}`;
      document.title = `${A.roomTitle(room)} (report) · Aula`;
    }
    $("#live-link").href = `/rooms/${roomId}`;
    $("#csv-link").href = `/api/rooms/${roomId}/report.csv`;
    $("#print").addEventListener("click", () => window.print());
    $("#legend").append(A.legend());
    try {
      await load();
    } catch (err) {
      if (err instanceof A.ApiError && err.status === 403) {
        A.showMessage("You do not have access to this room.", "error");
        $("#report").hidden = true;
        $("#csv-link").hidden = true;
        return;
      }
      throw err;
    }
  });
})();
