// Aula dashboard: the user's own account (change password; the other sessions end).
"use strict";

(function () {
  const A = window.Aula;
  const { $ } = A;

  async function submit(ev) {
    ev.preventDefault();
    const area = $("#password-msg");
    const current = $("#current-password").value;
    const next = $("#new-password").value;
    if (!current || !next) return A.showMessage("Type your current password and a new one.", "error", { area });
    if (next !== $("#repeat-password").value) return A.showMessage("The two new passwords differ.", "error", { area });
    const btn = $("#password-submit");
    btn.disabled = true;
    try {
      const res = await A.api("/api/me/password", { method: "POST", body: { current_password: current, new_password: next } });
      const ended = res && res.sessions_ended ? ` ${res.sessions_ended} other session(s) logged out.` : "";
      A.showMessage(`Your password is changed.${ended}`, "ok", { area });
      ev.target.reset();
    } catch (err) {
      A.showError(err, area);
    } finally {
      btn.disabled = false;
    }
  }

  A.start(async () => {
    $("#password-form").addEventListener("submit", submit);
  });
})();
