"""The server process: wires storage, writer, broker clients, summaries, retention and HTTP; starts and stops them."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from device.contract.topics import ALL_EVENTS
from server.app import create_app
from server.auth import LoginLimiter
from server.broker import BrokerClient, subscriptions
from server.config import ServerConfig
from server.context import AppContext
from server.db import Database
from server.devices import DeviceLimits, DeviceRegistry
from server.fleet import AlertLoop, FleetMonitor
from server.hub import LiveHub
from server.ingest import Ingestor
from server.metrics import IngestStats
from server.storage import Storage
from server.summaries import RoomSummaries
from server.writer import BatchWriter

logger = logging.getLogger(__name__)


class RetentionSweeper:
    """Deletes old raw events (and optionally aggregates) at start and then every interval."""

    def __init__(self, storage: Storage, config: ServerConfig):
        self.storage = storage
        self.config = config.retention
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, int] | None = None

    def sweep(self) -> dict[str, int]:
        done = self.storage.retention.apply(self.config.raw_days, self.config.aggregate_days)
        self.last = done
        if any(done.values()):
            logger.info("retention: deleted %s", ", ".join(f"{v} {k}" for k, v in done.items()))
        return done

    def _run(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception as exc:
                logger.warning("retention: sweep failed (%s); next try in %.0f s", exc, self.config.sweep_interval_s)
                self.storage.db.reset_thread_connection()
            if self._stop.wait(self.config.sweep_interval_s):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aula-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class _Uvicorn(uvicorn.Server):
    """uvicorn that ends open live streams as soon as it is asked to stop."""

    def __init__(self, config: uvicorn.Config, hub: LiveHub):
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig, frame) -> None:
        self.hub.close()
        super().handle_exit(sig, frame)


class AulaServer:
    """One server instance; `serve()` runs it in the foreground until SIGTERM or Ctrl-C."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.db = Database(config.database)
        self.storage = Storage(self.db)
        self.stats = IngestStats()
        intake = config.intake
        limits = DeviceLimits(
            intake.new_devices_per_site, intake.new_devices_total, intake.device_rate_per_s, intake.device_burst
        )
        self.registry = DeviceRegistry(config.devices.auto_assign, config.devices.stale_after_s, limits)
        self.hub = LiveHub(self.stats, config.http.sse_queue)
        self.broker: BrokerClient | None = None
        self.live_feed: BrokerClient | None = None
        self.writer: BatchWriter | None = None
        self.ingestor: Ingestor | None = None
        self.summaries: RoomSummaries | None = None
        self.retention = RetentionSweeper(self.storage, config)
        self.fleet = FleetMonitor(config.fleet.alert_after_s, config.fleet.trend_samples)
        self.alerts: AlertLoop | None = None
        self.ctx = AppContext(
            config=config,
            db=self.db,
            storage=self.storage,
            stats=self.stats,
            hub=self.hub,
            registry=self.registry,
            limiter=LoginLimiter.from_config(config.http),
            fleet=self.fleet,
        )
        self.app = create_app(self.ctx)
        self._http: _Uvicorn | None = None
        self._http_thread: threading.Thread | None = None
        self._intake_open = threading.Event()

    # ---- background parts ---------------------------------------------------------------------------------

    def start_background(self) -> None:
        """Migrate, then start the writer, the broker clients, summaries and retention."""
        cfg = self.config
        applied = self.db.migrate()
        logger.info("database: %s ready (%s migrations applied now)", self.db.description, len(applied))
        self.registry.reload(self.storage.devices.assignments(), self.storage.rooms.index())
        # The trends stored before this start; health that arrives from now on is appended to them.
        self.fleet.restore(self.storage.health_trends.recent(cfg.fleet.trend_samples))
        self.writer = BatchWriter(
            self.storage,
            self.stats,
            self.registry,
            acker=self._ack,
            batch_max=cfg.database.batch_max,
            queue_max=cfg.database.queue_max,
            refresh_s=cfg.devices.refresh_s,
            unassigned_max=cfg.intake.unassigned_events_max,
            quarantine_max=cfg.intake.quarantine_max,
            forget_new_after_s=cfg.intake.new_device_ttl_s,
            trend_samples=cfg.fleet.trend_samples,
        )
        self.writer.start()
        shared = cfg.mqtt.shared_group is not None
        window = {"max_age_s": cfg.intake.max_age_s, "max_ahead_s": cfg.intake.max_ahead_s}
        self.ingestor = Ingestor(
            self.stats, self.registry, self.writer, self.hub, None, acker=self._ack, live_events=not shared, **window
        )
        self.ingestor.fleet = self.fleet
        self._intake_open.set()
        self.broker = BrokerClient(cfg.mqtt, self._on_message, subscriptions(cfg.mqtt))
        if cfg.summaries.enabled:
            self.summaries = RoomSummaries(cfg.summaries, self.registry, self.stats, self._publish_retained)
            self.ingestor.summaries = self.summaries
            self.summaries.start()
        if shared:
            # The shared subscription gives this instance only part of the events; its dashboards need all.
            live = Ingestor(self.stats, self.registry, None, self.hub, self.summaries, **window)
            self.live_feed = BrokerClient(
                cfg.mqtt,
                lambda t, p, r, tok: live.handle(t, p, r, tok),
                [(ALL_EVENTS, 0)],
                client_id=f"{cfg.mqtt.client_id}-live"[:64],
                persistent=False,
                manual_ack=False,
            )
            self.live_feed.start()
        self.broker.start()
        self.ctx.broker = self.broker
        self.ctx.writer = self.writer
        self.retention.start()
        self.alerts = AlertLoop(cfg.fleet.check_interval_s, self._fleet_alerts, self.fleet, self._publish_retained)
        self.alerts.start()

    def _on_message(self, topic: str, payload: bytes, retained: bool, token) -> None:
        if not self._intake_open.is_set():
            return  # stopping: left unacknowledged, so the broker keeps it for the next start
        assert self.ingestor is not None
        self.ingestor.handle(topic, payload, retained, token)

    def _ack(self, tokens: list) -> None:
        if self.broker is not None:
            self.broker.ack(tokens)

    def _fleet_alerts(self) -> tuple[set[str], list]:
        views = self.ctx.fleet_view()
        self.fleet.forget({(v["site"], v["device_id"]) for v in views})
        return {v["site"] for v in views}, self.fleet.alerts(views, int(time.time() * 1000))

    def _publish_retained(self, topic: str, payload: bytes) -> bool:
        return self.broker is not None and self.broker.publish(topic, payload, qos=1, retain=True)

    def stop_background(self) -> None:
        """Stop taking messages, write what is queued (acknowledging it), then disconnect."""
        manual = self.config.mqtt.ack_after_commit
        if self.live_feed is not None:
            self.live_feed.stop()
        if manual:
            self._intake_open.clear()
        elif self.broker is not None:
            self.broker.stop()  # automatic acks: stop the flow first, then write what was acknowledged
        if self.writer is not None:
            self.writer.stop()
        if self.broker is not None and manual:
            self.broker.stop()
        if self.summaries is not None:
            self.summaries.stop()
        self.retention.stop()
        if self.alerts is not None:
            self.alerts.stop()
        self.hub.close()
        self.db.close()

    # ---- HTTP ---------------------------------------------------------------------------------------------

    def _uvicorn(self, host: str, port: int) -> _Uvicorn:
        http = self.config.http
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level=self.config.log_level,
            access_log=self.config.log_level == "debug",
            proxy_headers=True,
            forwarded_allow_ips=http.forwarded_allow_ips,
            ssl_certfile=http.tls_certfile,
            ssl_keyfile=http.tls_keyfile,
            timeout_graceful_shutdown=3,
            lifespan="on",
        )
        return _Uvicorn(config, self.hub)

    def serve(self) -> None:
        """Run in the foreground until SIGTERM/SIGINT."""
        host, port = self.config.http.host_port
        self.start_background()
        try:
            self._http = self._uvicorn(host, port)
            scheme = "https" if self.config.http.tls_certfile else "http"
            logger.info("HTTP: serving on %s://%s:%s", scheme, host, port)
            self._http.run()
        finally:
            self.stop_background()

    def start_http_thread(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> int:
        """Serve HTTP on a background thread (tests, benchmarks); returns the port."""
        self._http = self._uvicorn(host, port)
        self._http_thread = threading.Thread(target=self._http.run, name="aula-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + timeout
        while not self._http.started:
            if time.monotonic() > deadline or not self._http_thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self._http.servers[0].sockets[0].getsockname()[1]

    def stop_http_thread(self) -> None:
        if self._http is not None and self._http_thread is not None:
            self.hub.close()
            self._http.should_exit = True
            self._http_thread.join(10)
            self._http_thread = None
