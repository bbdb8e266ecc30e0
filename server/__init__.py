"""edgefleet control plane: device registry, artifact store, deployments, admin API, metrics.

Entry points: `server.app.serve(ServerConfig(...))` in-process, `python -m server` as a
process, `server.admin_client.AdminClient` for operators.
"""
