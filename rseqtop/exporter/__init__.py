"""The Prometheus exporter behind `rseqtop export`.

metrics.py   a prometheus_client Collector over any snapshot source
cgroup.py    pod / container labels from /proc/PID/cgroup
webconfig.py exporter-toolkit web config (TLS, basic auth with bcrypt)
server.py    the HTTP server (landing page, /-/healthy, /-/ready, metrics)
privsep.py   privilege separation: the unprivileged HTTP process and its link to the collector
"""

DEFAULT_PORT = 9436
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
