// Aula dashboard: the login page.
"use strict";

(function () {
  const A = window.Aula;
  const { $ } = A;

  // Only same-site paths are followed after login: no "//host", no absolute URLs, and no tabs, newlines or
  // backslashes, which browsers drop or rewrite ("/%09/evil.example" becomes "//evil.example"). The path is
  // resolved the way the browser will resolve it, and kept only if it stays on this origin.
  function nextPath() {
    const next = new URLSearchParams(location.search).get("next");
    if (!next || !next.startsWith("/") || /[\u0000-\u0020\u007f\\]/.test(next)) {
      return "/";
    }
    let url;
    try {
      url = new URL(next, location.origin);
    } catch (e) {
      return "/";
    }
    if (url.origin !== location.origin || url.pathname.startsWith("/login")) {
      return "/";
    }
    return url.pathname + url.search + url.hash;
  }

  async function submit(ev) {
    ev.preventDefault();
    const username = $("#username").value.trim();
    const password = $("#password").value;
    if (!username || !password) {
      A.showMessage("Enter your user name and password.", "error");
      (username ? $("#password") : $("#username")).focus();
      return;
    }
    const btn = $("#login-submit");
    btn.disabled = true;
    btn.textContent = "Logging in…";
    try {
      await A.api("/api/login", { method: "POST", body: { username, password }, redirectOn401: false });
      location.assign(nextPath());
    } catch (err) {
      if (err instanceof A.ApiError && err.status === 401) {
        A.showMessage("Wrong user name or password.", "error");
        $("#password").value = "";
        $("#password").focus();
      } else if (err instanceof A.ApiError && err.status === 429) {
        A.showMessage("Too many failed attempts from this computer. Wait a few seconds, then try again.", "error");
      } else {
        A.showError(err);
      }
      btn.disabled = false;
      btn.textContent = "Log in";
    }
  }

  function init() {
    $("#login-form").addEventListener("submit", submit);
    $("#username").focus();
    // Already logged in? Go straight on.
    A.api("/api/me", { redirectOn401: false }).then(() => location.replace(nextPath())).catch(() => {});
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
