// Aula dashboard: administration (devices incl. new ones to assign, rooms, users and their access, API tokens).
"use strict";

(function () {
  const A = window.Aula;
  const { h, $, clear } = A;

  const data = { rooms: [], users: [], devices: [], tokens: [], me: null };

  function roomLabel(r) {
    return r.name ? `${r.name} (${r.site}/${r.room})` : `${r.site}/${r.room}`;
  }

  function roomOptions(selectedId, placeholder) {
    const opts = [];
    if (placeholder) opts.push(h("option", { value: "" }, placeholder));
    for (const r of data.rooms) opts.push(h("option", { value: r.id, selected: r.id === selectedId }, roomLabel(r)));
    return opts;
  }

  // Run a form action: disable the button, show errors or a confirmation in `area`, then reload.
  async function act(area, button, fn, okText) {
    if (button) button.disabled = true;
    try {
      await fn();
      A.showMessage(okText, "ok", { area });
      await loadAll();
      return true;
    } catch (err) {
      A.showError(err, area);
      return false;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // ---- devices ------------------------------------------------------------------------------------------------

  function renderDevices() {
    const box = clear($("#devices"));
    const list = [...data.devices].sort((a, b) =>
      (a.status === "new" ? 0 : 1) - (b.status === "new" ? 0 : 1) || String(a.device_id).localeCompare(String(b.device_id)));
    if (!list.length) {
      box.append(h("p", { class: "empty" }, "No device has connected yet. Start a device with this server's broker address."));
      return;
    }
    const rows = list.map((d) => {
      const st = ["online", "offline", "degraded", "stopped", "new"].includes(d.state) ? d.state : "unknown";
      const reported = d.reported_room ?? d.room; // the room id the device says it is in (its topic level)
      const current = Number.isFinite(d.room_id)
        ? data.rooms.find((r) => r.id === d.room_id)
        : data.rooms.find((r) => r.site === d.site && r.room === reported);
      const select = h("select", { "aria-label": `Room for ${d.device_id}` },
        roomOptions(current ? current.id : null, d.status === "new" ? "Choose a room…" : null));
      const btn = h("button", { type: "button", class: "btn btn-primary" }, d.status === "new" ? "Assign" : "Move");
      btn.addEventListener("click", () => {
        const roomId = Number(select.value);
        if (!select.value) {
          A.showMessage(`Choose a room for ${d.device_id} first.`, "error", { area: $("#devices-msg") });
          return;
        }
        act($("#devices-msg"), btn,
          () => A.api(`/api/devices/${encodeURIComponent(d.site)}/${encodeURIComponent(d.device_id)}/assign`,
            { method: "POST", body: { room_id: roomId } }),
          `${d.device_id} is now assigned to ${roomLabel(data.rooms.find((r) => r.id === roomId) || { site: "", room: roomId })}.`);
      });
      return h("tr", { class: d.status === "new" ? "row-new" : "", dataset: { device: d.device_id } },
        h("td", { "data-label": "Device" }, h("strong", {}, d.device_id)),
        h("td", { "data-label": "Site" }, d.site),
        h("td", { "data-label": "Reported room" }, reported || "–", current && d.status !== "new" ? h("div", { class: "muted small" }, `in ${current.name || current.room}`) : null),
        h("td", { "data-label": "Status" }, h("span", { class: `badge badge-${d.status === "new" ? "new" : "assigned"}` },
          d.status === "new" ? h("span", { class: "badge-icon", "aria-hidden": "true" }) : null,
          d.status === "new" ? "New" : "Assigned")),
        h("td", { "data-label": "State" }, st === "new"
          ? h("span", { class: "muted small" }, "waiting for a room")
          : h("span", { class: `badge badge-${st}` }, h("span", { class: "badge-icon", "aria-hidden": "true" }),
            st[0].toUpperCase() + st.slice(1)),
        d.reason ? h("div", { class: "muted small" }, d.reason) : null),
        h("td", { "data-label": "Last seen" }, A.ago(d.last_seen_ms)),
        h("td", { "data-label": "Assign to room" }, data.rooms.length ? h("div", { class: "assign" }, select, btn) : h("span", { class: "muted small" }, "Add a room first")));
    });
    box.append(h("table", { class: "admin-table" },
      h("thead", {}, h("tr", {}, ["Device", "Site", "Reported room", "Status", "State", "Last seen", "Assign to room"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  }

  // ---- rooms, users, tokens -----------------------------------------------------------------------------------

  function renderRooms() {
    const ul = clear($("#rooms"));
    if (!data.rooms.length) ul.append(h("li", { class: "empty" }, "No rooms yet."));
    for (const r of data.rooms) {
      ul.append(h("li", { dataset: { room: r.id } }, h("a", { href: `/rooms/${r.id}` }, r.name || `${r.site}/${r.room}`),
        h("span", { class: "muted small" }, ` · site ${r.site}, room ${r.room}`)));
    }
    const checks = clear($("#token-rooms"));
    if (!data.rooms.length) checks.append(h("span", { class: "muted small" }, "No rooms yet."));
    for (const r of data.rooms) {
      const id = `token-room-${r.id}`;
      checks.append(h("label", { for: id }, h("input", { type: "checkbox", id, value: r.id }), roomLabel(r)));
    }
    const sel = clear($("#grant-room"));
    sel.append(...roomOptions(null, "Choose a room…"));
  }

  function roomName(id) {
    const r = data.rooms.find((rr) => rr.id === id);
    return r ? (r.name || `${r.site}/${r.room}`) : `room ${id}`;
  }

  function actionButton(text, label, onClick, kind = "btn-secondary") {
    const btn = h("button", { type: "button", class: `btn btn-small ${kind}`, "aria-label": label }, text);
    btn.addEventListener("click", () => onClick(btn));
    return btn;
  }

  const userPath = (u) => `/api/users/${encodeURIComponent(u.username)}`;

  // The room access of a teacher, each with a button that takes it away at once (their open streams end too).
  function userRooms(u) {
    if (u.role === "admin") return h("div", { class: "muted small" }, "All rooms (administrator)");
    const ids = Array.isArray(u.rooms) ? u.rooms : [];
    if (!ids.length) return h("div", { class: "muted small" }, "No rooms yet");
    return h("div", { class: "chips", role: "list", "aria-label": `Rooms of ${u.username}` }, ids.map((id) =>
      h("span", { class: "chip", role: "listitem", dataset: { room: id } }, roomName(id),
        actionButton("Remove", `Remove ${u.username}'s access to ${roomName(id)}`, (btn) =>
          act($("#user-msg"), btn, () => A.api(`${userPath(u)}/rooms/${id}`, { method: "DELETE" }),
            `${u.username} can no longer see ${roomName(id)}.`), "btn-quiet"))));
  }

  // Set a password, disable or enable, delete; an administrator cannot disable or delete their own account.
  function userActions(u) {
    const self = data.me && u.username === data.me.username;
    const area = $("#user-msg");
    const box = h("div", { class: "user-actions" });
    const pwInput = h("input", { type: "password", autocomplete: "new-password", "aria-label": `New password for ${u.username}`,
      placeholder: "New password", class: "pw-input" });
    const pwForm = h("form", { class: "inline-field pw-form", hidden: true },
      pwInput, h("button", { type: "submit", class: "btn btn-small btn-primary" }, "Save"));
    pwForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (!pwInput.value) return A.showMessage("Type the new password first.", "error", { area });
      act(area, ev.submitter, () => A.api(`${userPath(u)}/password`, { method: "POST", body: { password: pwInput.value } }),
        `New password set for ${u.username}; their sessions have ended.`);
    });
    box.append(actionButton("Set password", `Set a new password for ${u.username}`, () => {
      pwForm.hidden = !pwForm.hidden;
      if (!pwForm.hidden) pwInput.focus();
    }));
    if (self) {
      box.append(h("span", { class: "muted small" }, "This is you."));
    } else {
      box.append(actionButton(u.disabled ? "Enable" : "Disable", `${u.disabled ? "Enable" : "Disable"} ${u.username}`,
        (btn) => act(area, btn, () => A.api(userPath(u), { method: "PATCH", body: { disabled: !u.disabled } }),
          u.disabled ? `${u.username} can log in again.` : `${u.username} is disabled and logged out everywhere.`)));
      box.append(actionButton("Delete", `Delete ${u.username}`, (btn) => {
        if (!window.confirm(`Delete ${u.username}? Their sessions end and the API tokens they made stop working.`)) return;
        act(area, btn, () => A.api(userPath(u), { method: "DELETE" }), `${u.username} is deleted.`);
      }, "btn-danger"));
    }
    box.append(pwForm);
    return box;
  }

  function renderUsers() {
    const ul = clear($("#users"));
    if (!data.users.length) ul.append(h("li", { class: "empty" }, "No users yet."));
    for (const u of data.users) {
      ul.append(h("li", { dataset: { user: u.username } }, h("strong", {}, u.username),
        h("span", { class: "muted small" }, ` · ${u.role || "teacher"}`),
        u.disabled ? h("span", { class: "badge badge-offline user-disabled" }, "Disabled") : null,
        userRooms(u), userActions(u)));
    }
    const sel = clear($("#grant-user"));
    sel.append(h("option", { value: "" }, "Choose a user…"),
      ...data.users.map((u) => h("option", { value: u.username }, u.username)));
  }

  function renderTokens() {
    const box = clear($("#tokens"));
    if (!data.tokens.length) {
      box.append(h("p", { class: "empty" }, "No API tokens yet."));
      return;
    }
    const rows = data.tokens.map((t) => {
      const state = t.revoked ? "Revoked" : t.expired ? "Expired" : "Active";
      return h("tr", { dataset: { token: t.id } },
        h("td", { "data-label": "Name" }, h("strong", {}, t.name)),
        h("td", { "data-label": "Rooms" }, t.room_ids.map(roomName).join(", ") || "–"),
        h("td", { "data-label": "Made by" }, t.created_by || "–"),
        h("td", { "data-label": "Expires" }, new Date(t.expires_ms).toLocaleDateString()),
        h("td", { "data-label": "State" }, h("span", { class: `badge badge-${state === "Active" ? "online" : "offline"}` }, state)),
        h("td", { "data-label": "" }, state === "Active"
          ? actionButton("Revoke", `Revoke token ${t.name}`, (btn) => act($("#token-msg"), btn,
            () => A.api(`/api/tokens/${t.id}`, { method: "DELETE" }), `Token ${t.name} is revoked.`), "btn-danger")
          : null));
    });
    box.append(h("table", { class: "admin-table" },
      h("thead", {}, h("tr", {}, ["Name", "Rooms", "Made by", "Expires", "State", ""]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  }

  async function loadAll() {
    const all = await Promise.allSettled([
      A.api("/api/rooms"), A.api("/api/users"), A.api("/api/devices"), A.api("/api/tokens"),
    ]);
    const [rooms, users, devices, tokens] = all;
    const denied = all.find((r) => r.status === "rejected" && r.reason && r.reason.status === 403);
    if (denied) {
      $("#admin").hidden = true;
      A.showMessage("This page is for administrators. You do not have access to it.", "error");
      return;
    }
    const failed = all.find((r) => r.status === "rejected");
    if (failed) A.showError(failed.reason);
    else A.clearMessage();
    if (rooms.status === "fulfilled") data.rooms = rooms.value || [];
    if (users.status === "fulfilled") data.users = users.value || [];
    if (devices.status === "fulfilled") data.devices = devices.value || [];
    if (tokens.status === "fulfilled") data.tokens = tokens.value || [];
    renderRooms();
    renderUsers();
    renderDevices();
    renderTokens();
  }

  function wireForms() {
    $("#room-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const area = $("#room-msg");
      const site = $("#room-site").value.trim();
      const room = $("#room-room").value.trim();
      const name = $("#room-name").value.trim() || `${site} ${room}`;
      if (!site || !room) return A.showMessage("Site and room id are needed (as the device is configured).", "error", { area });
      act(area, ev.submitter, () => A.api("/api/rooms", { method: "POST", body: { site, room, name } }), `Room ${name} added.`)
        .then((ok) => ok && ev.target.reset());
    });

    $("#user-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const area = $("#user-add-msg");
      const username = $("#user-name").value.trim();
      const password = $("#user-pass").value;
      const role = $("#user-role").value;
      if (!username || !password) return A.showMessage("A user name and a password are needed.", "error", { area });
      act(area, ev.submitter, () => A.api("/api/users", { method: "POST", body: { username, password, role } }),
        `User ${username} added.`).then((ok) => ok && ev.target.reset());
    });

    $("#grant-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const area = $("#grant-msg");
      const user = $("#grant-user").value;
      const roomId = Number($("#grant-room").value);
      if (!user || !$("#grant-room").value) return A.showMessage("Choose a user and a room.", "error", { area });
      act(area, ev.submitter, () => A.api(`/api/users/${encodeURIComponent(user)}/rooms`, { method: "POST", body: { room_id: roomId } }),
        `${user} can now see ${roomLabel(data.rooms.find((r) => r.id === roomId) || { site: "", room: roomId })}.`);
    });

    $("#token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const area = $("#token-msg");
      const name = $("#token-name").value.trim();
      const roomIds = [...document.querySelectorAll("#token-rooms input:checked")].map((i) => Number(i.value));
      const days = Number($("#token-days").value || 90);
      if (!name || !roomIds.length) return A.showMessage("Give the token a name and pick at least one room.", "error", { area });
      if (!(days > 0 && days <= 3650)) return A.showMessage("A token is valid for 1 to 3650 days.", "error", { area });
      const btn = ev.submitter;
      if (btn) btn.disabled = true;
      try {
        const res = await A.api("/api/tokens", { method: "POST", body: { name, room_ids: roomIds, expires_days: days } });
        A.clearMessage(area);
        showToken(name, res && res.token);
        ev.target.reset();
        await loadAll();
      } catch (err) {
        A.showError(err, area);
      } finally {
        if (btn) btn.disabled = false;
      }
    });
  }

  function showToken(name, token) {
    const box = clear($("#token-box"));
    box.hidden = false;
    const value = h("code", { class: "token-value", id: "token-value", tabindex: "0" }, token || "(the server sent no token)");
    const copy = h("button", { type: "button", class: "btn btn-secondary" }, "Copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(token);
        copy.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(value);
        const sel = getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
    });
    box.append(h("p", { role: "status" }, h("strong", {}, `Token \u201c${name}\u201d created.`),
      " Copy it now: it will not be shown again."), value, h("p", {}, copy));
  }

  A.start(async (me) => {
    if (me.role !== "admin") {
      $("#admin").hidden = true;
      A.showMessage("This page is for administrators. You do not have access to it.", "error");
      return;
    }
    data.me = me;
    wireForms();
    await loadAll();
    setInterval(() => {
      if (!document.hidden && !document.activeElement.closest("form, select, button, #devices")) loadAll().catch(() => {});
    }, 15000);
  });
})();
