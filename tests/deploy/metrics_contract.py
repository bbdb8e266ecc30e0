"""The server's Prometheus exporter contract, as the dashboard and alert rules rely on it.

Name -> label names. A metric renamed or a label dropped in the server must be renamed
here, in deploy/grafana/dashboards/*.json and in deploy/prometheus/alerts.yml together;
tests/deploy/test_static.py fails until all three agree.
"""

VARIANT_LABELS = ("device_id", "variant", "bits", "sparsity")

METRICS: dict[str, tuple[str, ...]] = {
    "edgefleet_devices": ("state",),                       # state = online | offline
    "edgefleet_device_up": ("device_id",),
    "edgefleet_device_last_seen_timestamp_seconds": ("device_id",),
    "edgefleet_device_battery_ratio": ("device_id",),      # 0..1, absent when unknown
    "edgefleet_device_power_plugged": ("device_id",),
    "edgefleet_device_temperature_celsius": ("device_id",),
    "edgefleet_device_cpu_load_ratio": ("device_id",),
    "edgefleet_device_memory_available_bytes": ("device_id",),
    "edgefleet_device_active_variant_info": VARIANT_LABELS,  # value 1
    "edgefleet_device_inferences_total": VARIANT_LABELS,
    "edgefleet_device_inference_errors_total": VARIANT_LABELS,
    "edgefleet_device_inference_latency_seconds": VARIANT_LABELS + ("quantile",),  # 0.5, 0.95
    "edgefleet_device_variant_switches_total": ("device_id", "reason"),
    "edgefleet_bundles": (),
    "edgefleet_deployments": ("state",),
    "edgefleet_deployment_targets_waiting": (),            # phased rollouts: not released yet
    "edgefleet_grpc_requests_total": ("service", "method", "code"),
    "edgefleet_artifact_bytes_served_total": (),
}

# Deployment states the server exports (lower-cased Deployment.State names, each from
# start at 0); the EdgefleetDeploymentFailed rule matches failed|timed_out|rolled_back.
DEPLOYMENT_STATES = ("in_progress", "succeeded", "failed", "rolled_back", "timed_out")

# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = ("job", "instance")
