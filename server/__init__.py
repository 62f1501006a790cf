"""Aula aggregation server: MQTT ingest, storage, room summaries, and the dashboard's HTTP API."""
