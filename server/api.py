"""The JSON API: login, rooms, live data, the live stream, segments, reports and administration."""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import ipaddress
import json
import logging
import os
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field, field_validator

from device.common.config_loader import StrictModel
from device.contract import CommandName
from device.contract.labels import LABELS
from server.auth import SESSION_COOKIE, Principal, check_csrf, identify
from server.commands import send_to_room
from server.context import AppContext
from server.fleet import prometheus_fleet
from server.hub import CLOSED
from server.metrics import prometheus_text
from server.passwords import MAX_PASSWORD_CHARS
from server.storage.base import Conflict, NotFound, now_ms
from server.storage.users import ROLES

logger = logging.getLogger(__name__)

router = APIRouter()


class Body(StrictModel):
    """A request body that rejects unknown fields."""


def _topic_level(value: str) -> str:
    if not 0 < len(value) <= 64 or any(c in value for c in "/+#") or not value.isprintable():
        raise ValueError("must be 1-64 printable characters without '/', '+' or '#'")
    return value


class LoginBody(Body):
    username: str = Field(max_length=64)
    password: str = Field(max_length=MAX_PASSWORD_CHARS)


class SegmentBody(Body):
    name: str = Field(min_length=1, max_length=200)


class AssignBody(Body):
    room_id: int


class UserBody(Body):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(max_length=MAX_PASSWORD_CHARS)
    role: str = Field(pattern="^(teacher|admin)$")


class RoomBody(Body):
    site: str
    room: str
    name: str = Field(min_length=1, max_length=200)

    @field_validator("site", "room")
    @classmethod
    def _level(cls, value: str) -> str:
        return _topic_level(value)


class TokenBody(Body):
    name: str = Field(min_length=1, max_length=200)
    room_ids: list[int] = Field(min_length=1, max_length=1000)
    expires_days: float = Field(90, gt=0, le=3650, description="The token stops working this many days from now.")


class PasswordChangeBody(Body):
    current_password: str = Field(max_length=MAX_PASSWORD_CHARS)
    new_password: str = Field(max_length=MAX_PASSWORD_CHARS)


class PasswordResetBody(Body):
    password: str = Field(max_length=MAX_PASSWORD_CHARS)


class UserChangeBody(Body):
    disabled: bool


class PrivacyBody(Body):
    paused: bool = Field(description="true: pause sensing on every device of the room; false: resume it")


def ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(ctx)]


def principal(request: Request, c: Ctx) -> Principal:
    """The authenticated caller (401 otherwise); unsafe cookie requests must pass the CSRF check (403)."""
    who = identify(request, c.storage)
    if who is None:
        raise HTTPException(401, "not logged in")
    check_csrf(request, who)
    return who


Who = Annotated[Principal, Depends(principal)]


def admin(who: Who) -> Principal:
    if not who.is_admin:
        raise HTTPException(403, "administrators only")
    return who


Admin = Annotated[Principal, Depends(admin)]


def room_for(c: AppContext, who: Principal, room_id: int) -> dict[str, Any]:
    """The room, when the caller may see it: 403 for another teacher's room, 404 for a missing one."""
    if not who.can_see(room_id):
        raise HTTPException(403, "not your room")
    room = c.storage.rooms.get(room_id)
    if room is None:
        raise HTTPException(404, f"room {room_id} does not exist")
    return room


def client_is_loopback(request: Request) -> bool:
    """Whether the client (as a trusted proxy reports it) is on this machine."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PLAIN_HTTP_LOGIN = (
    "logins from other machines need HTTPS: passwords and session cookies would cross the network readable. "
    "Serve the dashboard through a TLS reverse proxy (nginx or Caddy, sending X-Forwarded-Proto from an address in "
    "http.forwarded_allow_ips) or set http.tls_certfile and http.tls_keyfile; see docs/server.md, section TLS"
)


def _throttle(c: AppContext, client: str, username: str) -> None:
    wait = c.limiter.retry_after(client, username)
    if wait > 0:
        raise HTTPException(429, "too many failed logins; try again later", headers={"Retry-After": str(int(wait) + 1)})


# ---- session ------------------------------------------------------------------------------------------------


@router.post("/api/login", summary="Log in; sets the aula_session cookie")
def login(body: LoginBody, request: Request, response: Response, c: Ctx) -> dict[str, str]:
    client = request.client.host if request.client else "unknown"
    https = request.url.scheme == "https"  # uvicorn takes the scheme from a trusted proxy's X-Forwarded-Proto
    local = client_is_loopback(request)
    if not https and not local and not c.config.http.insecure_http_login:
        raise HTTPException(403, PLAIN_HTTP_LOGIN)
    _throttle(c, client, body.username)
    user = c.storage.users.authenticate(body.username, body.password)
    if user is None:
        c.limiter.failed(client, body.username)
        logger.warning("login: failed for user %r from %s", body.username[:64], client)
        raise HTTPException(401, "wrong user name or password")
    c.limiter.succeeded(client, body.username)
    ttl_ms = int(c.config.http.session_hours * 3_600_000)
    token, _ = c.storage.sessions.create(user["id"], ttl_ms)
    insecure_ok = c.config.http.insecure_http_login  # a closed test network: a Secure cookie would never return
    secure = https or c.config.http.secure_cookies or (not local and not insecure_ok)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=ttl_ms // 1000, httponly=True, samesite="strict", secure=secure, path="/"
    )
    logger.info("login: %s (%s) from %s", user["username"], user["role"], client)
    return {"username": user["username"], "role": user["role"]}


@router.post("/api/logout", summary="End the session")
def logout(request: Request, response: Response, c: Ctx) -> dict[str, bool]:
    who = identify(request, c.storage)
    if who is not None and who.kind == "session":
        check_csrf(request, who)
        c.storage.sessions.delete(request.cookies.get(SESSION_COOKIE, ""))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return {"ok": True}


@router.get("/api/me", summary="The caller, its CSRF token and its rooms")
def me(who: Who, c: Ctx) -> dict[str, Any]:
    return {"username": who.username, "role": who.role, "csrf": who.csrf, "rooms": c.storage.rooms.list(who.rooms)}


@router.post("/api/me/password", summary="Change one's own password (needs the current one); ends the other sessions")
def change_password(body: PasswordChangeBody, request: Request, who: Who, c: Ctx) -> dict[str, Any]:
    if who.kind != "session" or who.user_id is None:
        raise HTTPException(403, "only a logged-in user changes a password")
    client = request.client.host if request.client else "unknown"
    # The current password is a login secret too: wrong guesses here are throttled like logins.
    _throttle(c, client, who.username)
    if not c.storage.users.check_password(who.user_id, body.current_password):
        c.limiter.failed(client, who.username)
        raise HTTPException(403, "the current password is wrong")
    c.limiter.succeeded(client, who.username)
    try:
        c.storage.users.set_password(who.username, body.new_password)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    ended = c.storage.sessions.end_for_user(who.user_id, keep=request.cookies.get(SESSION_COOKIE))
    logger.info("account: %s changed their password; %s other sessions ended", who.username, ended)
    return {"ok": True, "sessions_ended": ended}


# ---- rooms and live data ------------------------------------------------------------------------------------


@router.get("/api/rooms", summary="Rooms the caller may see")
def rooms(who: Who, c: Ctx) -> list[dict[str, Any]]:
    return c.storage.rooms.list(who.rooms)


_MEANS = (
    "`distribution` (the fused mood: mean probability per label), `dominant`, `valence`, `arousal`, `faces` "
    "(mean group size); `face`: the faces' own mood, `{distribution, dominant, valence, arousal, windows}`, and "
    "`voices`: the mood of the voices the microphone hears (mostly the teacher's; not what was said), "
    "`{distribution, dominant, valence, arousal, windows, segments}`, and `words`: the mood of the words it hears "
    "(mostly the teacher's; the device turns them into a mood and never sends them), "
    "`{distribution, dominant, valence, arousal, windows, utterances}`, each null where no window had that modality "
    "(and for data stored before the server kept it); `speech_segments`: stretches of speech counted; "
    "`text_utterances`: utterances whose words were read."
)


@router.get(
    "/api/rooms/{room_id}/live",
    summary="Recent 10 s buckets, the current state and the devices of a room",
    description="`buckets`: the 10 s buckets of the last `minutes`, oldest first, each with `t_ms`, `windows` and "
    f"the means: {_MEANS} `current`: the same means over the last `current_window_s` (null without windows).",
)
def live(room_id: int, who: Who, c: Ctx, minutes: int = Query(10, ge=1, le=1440)) -> dict[str, Any]:
    room = room_for(c, who, room_id)
    now = now_ms()
    buckets = c.storage.aggregates.buckets(room_id, now - minutes * 60_000)
    since = now - int(c.config.current_window_s * 1000)
    sums = c.storage.aggregates.merged(room_id, since)
    current = None
    if sums.windows:
        summary = sums.summary()
        current = {"t_ms": c.storage.aggregates.latest_bucket(room_id, since), **summary}
        current.pop("windows")
    devices = [c.device_view(d, now) for d in c.storage.devices.list(room_id)]
    return {"room": room, "buckets": buckets, "current": current, "devices": devices}


@router.get(
    "/api/rooms/{room_id}/stream",
    summary="Server-Sent Events: window and status events of a room",
    description="`window`: one device window, `{t_ms, device_id, distribution, dominant, valence, arousal, faces, "
    "face, voices, words, speech_segments, text_utterances}`, with `face`, `voices` and `words` as in the buckets "
    "of `/live`. "
    "`status`: `{device_id, state, reason, last_seen_ms}`.",
)
async def stream(room_id: int, request: Request, who: Who, c: Ctx) -> StreamingResponse:
    await run_in_threadpool(room_for, c, who, room_id)
    hub = c.hub
    sub = hub.subscribe(room_id)  # before the snapshot, so nothing falls between the two
    try:
        devices = await run_in_threadpool(c.storage.devices.list, room_id)
    except Exception:
        hub.unsubscribe(sub)
        raise
    ping_s = c.config.http.sse_ping_s

    def allowed() -> bool:
        # The same request's cookie or token, looked up afresh: logout, an ended session, a revoked or expired
        # token, a disabled account or a room taken away all show here.
        again = identify(request, c.storage)
        return again is not None and again.can_see(room_id)

    async def frames():
        try:
            yield "retry: 3000\n: connected\n\n"
            now = now_ms()
            for d in devices:
                view = c.device_view(d, now)
                view.pop("health")
                yield f"event: status\ndata: {json.dumps(view, separators=(',', ':'))}\n\n"
            loop = asyncio.get_running_loop()
            next_check = loop.time() + ping_s
            while True:
                if loop.time() >= next_check:
                    next_check = loop.time() + ping_s
                    if not await run_in_threadpool(allowed):
                        yield 'event: end\ndata: {"reason":"access ended"}\n\n'
                        return
                try:
                    frame = await asyncio.wait_for(sub.queue.get(), timeout=max(0.0, next_check - loop.time()))
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                out = [frame]
                while not sub.queue.empty() and len(out) < 256:  # one write for a burst
                    out.append(sub.queue.get_nowait())
                if CLOSED in out:
                    yield "".join(out[: out.index(CLOSED)])
                    return
                yield "".join(out)
        finally:
            hub.unsubscribe(sub)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


# ---- segments -----------------------------------------------------------------------------------------------


@router.post("/api/rooms/{room_id}/segments", status_code=201, summary="Start a named segment (ends an open one)")
def start_segment(room_id: int, body: SegmentBody, who: Who, c: Ctx) -> dict[str, Any]:
    room_for(c, who, room_id)
    return c.storage.segments.start(room_id, body.name, who.username)


@router.post("/api/rooms/{room_id}/segments/{segment_id}/stop", summary="End a segment")
def stop_segment(room_id: int, segment_id: int, who: Who, c: Ctx) -> dict[str, Any]:
    room_for(c, who, room_id)
    try:
        return c.storage.segments.stop(room_id, segment_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post(
    "/api/rooms/{room_id}/privacy",
    summary="Pause or resume sensing on the room's devices (a logged-in teacher of the room, or an admin)",
    description="Sends `pause` or `resume` to each device of the room over MQTT and returns `{command, devices: "
    "[{device_id, id, sent}]}` at once. Each device's answer arrives on the room's stream as an `ack` event; its "
    "retained status then says `paused`. A device whose config sets the pause refuses a resume.",
)
def room_privacy(room_id: int, body: PrivacyBody, who: Who, c: Ctx) -> dict[str, Any]:
    room_for(c, who, room_id)
    if who.kind != "session":
        raise HTTPException(403, "an API token may read a room but not command its devices; log in as its teacher")
    if c.broker is None or not c.broker.connected:
        raise HTTPException(503, "the server is not connected to the broker right now; try again in a moment")
    name = CommandName.PAUSE if body.paused else CommandName.RESUME
    sent = send_to_room(c.storage.devices.list(room_id), name, lambda t, p: c.broker.publish(t, p, qos=1))
    c.stats.add("commands_sent", sum(x.sent for x in sent))
    logger.info("room %s: %s sent by %s to %d device(s)", room_id, name.value, who.username, len(sent))
    return {"command": name.value, "devices": [x.to_dict() for x in sent]}


@router.get(
    "/api/rooms/{room_id}/segments",
    summary="Segments of a room with their emotion summary",
    description="Oldest first: `{id, name, start_ms, end_ms, windows, distribution, dominant, valence, arousal, "
    "faces_mean, face, voices, words}`, with `face`, `voices` and `words` as in the buckets of `/live`.",
)
def segments(room_id: int, who: Who, c: Ctx) -> list[dict[str, Any]]:
    room_for(c, who, room_id)
    return c.storage.segments.list(room_id)


def _cell(value: Any) -> Any:
    # A cell starting with = + - @ would run as a formula in a spreadsheet (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(t_ms: int | None) -> str:
    if t_ms is None:
        return ""
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@router.get("/api/rooms/{room_id}/report.csv", summary="CSV report: one row per segment")
def report_csv(room_id: int, who: Who, c: Ctx) -> Response:
    room_for(c, who, room_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["segment_id", "name", "start", "end", "duration_s", "windows", "dominant", "valence", "arousal", "faces_mean"]
        + [f"p_{label}" for label in LABELS]
    )
    for s in c.storage.segments.list(room_id):
        end = s["end_ms"]
        duration = "" if end is None else round((end - s["start_ms"]) / 1000, 1)
        dist = s["distribution"] or {}
        writer.writerow(
            [s["id"], _cell(s["name"]), _iso(s["start_ms"]), _iso(end), duration, s["windows"], s["dominant"] or ""]
            + ["" if s[k] is None else s[k] for k in ("valence", "arousal", "faces_mean")]
            + [dist.get(label, "") for label in LABELS]
        )
    headers = {"Content-Disposition": f'attachment; filename="room-{room_id}-report.csv"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


# ---- administration -----------------------------------------------------------------------------------------


@router.get("/api/devices", summary="All devices, including new ones (admin)")
def devices(_: Admin, c: Ctx) -> list[dict[str, Any]]:
    now = now_ms()
    out = []
    for d in c.storage.devices.list():
        view = c.device_view(d, now)
        view.update({"site": d["site"], "reported_room": d["reported_room"], "room_id": d["room_id"]})
        view.update({"status": d["status"], "first_seen_ms": d["first_seen_ms"], "paused": d["paused"]})
        out.append(view)
    return out


@router.post("/api/devices/{site}/{device_id}/assign", summary="Assign a device to a room (admin)")
def assign(site: str, device_id: str, body: AssignBody, _: Admin, c: Ctx) -> dict[str, Any]:
    try:
        device, backfilled = c.storage.devices.assign(site, device_id, body.room_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    c.registry.update_rooms({(site, device_id): (body.room_id, device["reported_room"])})
    view = c.device_view(device)
    view.update({"site": site, "room_id": body.room_id, "status": device["status"], "backfilled": backfilled})
    return view


@router.get(
    "/api/fleet",
    summary="Every device with its state and since when, release, models, latest health and trend; the alerts (admin)",
    description="`devices`: as `/api/devices`, plus `site`, `room` (its name), `since_ms`, `release`, `models` and "
    "`trend` (the last health figures, oldest first: `t_ms` and the figures of the fleet page). `alerts`: the "
    "devices offline or degraded for at least `alert_after_s`.",
)
def fleet(who: Admin, c: Ctx) -> dict[str, Any]:
    now = now_ms()
    views = c.fleet_view(now)
    return {"alert_after_s": c.config.fleet.alert_after_s, "devices": views,
            "alerts": c.fleet.alerts(views, now) if c.fleet is not None else []}


@router.get("/api/users", summary="Users and their rooms (admin)")
def users(_: Admin, c: Ctx) -> list[dict[str, Any]]:
    return c.storage.users.list()


@router.post("/api/users", status_code=201, summary="Create a user (admin)")
def create_user(body: UserBody, _: Admin, c: Ctx) -> dict[str, Any]:
    if body.role not in ROLES:
        raise HTTPException(422, "role must be teacher or admin")
    try:
        return c.storage.users.create(body.username, body.password, body.role)
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/api/users/{username}/rooms", summary="Give a user access to a room (admin)")
def add_user_room(username: str, body: AssignBody, _: Admin, c: Ctx) -> dict[str, Any]:
    try:
        return c.storage.users.add_room(username, body.room_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.delete("/api/users/{username}/rooms/{room_id}", summary="Take a room away from a user (admin)")
def remove_user_room(username: str, room_id: int, _: Admin, c: Ctx) -> dict[str, Any]:
    try:
        return c.storage.users.remove_room(username, room_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _not_self(who: Principal, username: str, action: str) -> None:
    # An administrator locking themselves out could leave the school with no administrator.
    if username == who.username:
        raise HTTPException(409, f"you cannot {action} your own account; ask another administrator")


@router.post("/api/users/{username}/password", summary="Set a user's password (admin); ends all their sessions")
def reset_password(username: str, body: PasswordResetBody, who: Admin, c: Ctx) -> dict[str, Any]:
    try:
        user_id = c.storage.users.set_password(username, body.password)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    ended = c.storage.sessions.end_for_user(user_id)
    logger.info("account: %s set the password of %s; %s sessions ended", who.username, username, ended)
    return {"ok": True, "sessions_ended": ended}


@router.patch("/api/users/{username}", summary="Disable or enable a user (admin); disabling ends their sessions")
def change_user(username: str, body: UserChangeBody, who: Admin, c: Ctx) -> dict[str, Any]:
    if body.disabled:
        _not_self(who, username, "disable")
    try:
        user_id = c.storage.users.set_disabled(username, body.disabled)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    if body.disabled:
        c.storage.sessions.end_for_user(user_id)
    logger.info("account: %s %s %s", who.username, "disabled" if body.disabled else "enabled", username)
    return c.storage.users.view(username)


@router.delete("/api/users/{username}", summary="Delete a user, their sessions and the API tokens they made (admin)")
def delete_user(username: str, who: Admin, c: Ctx) -> dict[str, bool]:
    _not_self(who, username, "delete")
    try:
        c.storage.users.delete(username)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    logger.info("account: %s deleted %s", who.username, username)
    return {"ok": True}


@router.post("/api/rooms", status_code=201, summary="Create a room (admin)")
def create_room(body: RoomBody, _: Admin, c: Ctx) -> dict[str, Any]:
    try:
        room = c.storage.rooms.create(body.site, body.room, body.name)
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    c.registry.add_room(room["site"], room["room"], room["id"])
    if c.config.devices.auto_assign and c.storage.devices.assign_matching_new(room["site"], room["room"], room["id"]):
        c.registry.update_rooms(c.storage.devices.assignments())
    return room


@router.post("/api/tokens", status_code=201, summary="Create an API token for some rooms; shown once (admin)")
def create_token(body: TokenBody, who: Admin, c: Ctx) -> dict[str, Any]:
    try:
        return c.storage.tokens.create(body.name, body.room_ids, who.username, body.expires_days)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get(
    "/api/tokens",
    summary="API tokens without their secrets (admin)",
    description="Oldest first: `{id, name, created_by, created_ms, expires_ms, revoked, expired, room_ids}`.",
)
def tokens(_: Admin, c: Ctx) -> list[dict[str, Any]]:
    return c.storage.tokens.list()


@router.delete("/api/tokens/{token_id}", summary="Revoke an API token at once (admin)")
def revoke_token(token_id: int, who: Admin, c: Ctx) -> dict[str, bool]:
    try:
        c.storage.tokens.revoke(token_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    logger.info("account: %s revoked API token %s", who.username, token_id)
    return {"ok": True}


# ---- health -------------------------------------------------------------------------------------------------


# What /healthz tells any client: enough for a load balancer or an uptime check, and nothing about the fleet.
PUBLIC_HEALTH = ("status", "database", "broker_connected")


@router.get("/healthz", summary="Status, broker and database state (503 when the database is down); the counters "
                                "and errors only for loopback clients or with the metrics token")
def healthz(request: Request, c: Ctx) -> JSONResponse:
    data = c.health()
    code = 200 if data["database"] == "ok" else 503
    env = c.config.http.metrics_token_env
    if not metrics_allowed(request, os.environ.get(env) if env else None):
        data = {k: data[k] for k in PUBLIC_HEALTH}  # error texts and counters describe the school's server
    return JSONResponse(data, status_code=code)


def metrics_text(c: AppContext) -> str:
    data = c.health()
    data["devices"] = c.registry.count
    text = prometheus_text(data)
    if c.fleet is not None:
        now = now_ms()
        views = c.fleet_view(now)
        text += prometheus_fleet(views, c.fleet.alerts(views, now))
    return text


def metrics_allowed(request: Request, token: str | None) -> bool:
    """A loopback client, or one that sends the metrics token: the counters describe the school's fleet."""
    if token and hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
        return True
    return client_is_loopback(request)


@router.get("/metrics", summary="The same counters in Prometheus text format (loopback, or with the metrics token)")
def metrics(request: Request, c: Ctx) -> Response:
    env = c.config.http.metrics_token_env
    if not metrics_allowed(request, os.environ.get(env) if env else None):
        raise HTTPException(403, "metrics are served to loopback clients, or with http.metrics_token_env's token")
    return Response(metrics_text(c), media_type="text/plain; version=0.0.4; charset=utf-8")
