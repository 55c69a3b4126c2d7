"""The gateway's Prometheus metrics, served on its own `/metrics` (the HTTP port it already has)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

# Round trips span a publish, the engine's decision and the log's commit: sub-millisecond to seconds.
ROUND_TRIP_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

REQUESTS: Final = Counter(
    "jetbook_gateway_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
WS_CLIENTS: Final = Gauge("jetbook_gateway_ws_clients", "WebSocket connections open now, by endpoint", ["endpoint"])
WS_FRAMES: Final = Counter(
    "jetbook_gateway_ws_frames_total", "WebSocket frames sent, by endpoint and frame type", ["endpoint", "type"]
)
COMMAND_ROUND_TRIP: Final = Histogram(
    "jetbook_gateway_command_round_trip_seconds",
    "A command's publish to JB_CMD until its events are read back from JB_EVT, by entry point",
    ["via"],
    buckets=ROUND_TRIP_BUCKETS,
)
