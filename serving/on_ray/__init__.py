"""Kino on Ray: the local cluster, the dispatcher's stage client over Serve handles, metrics on Ray's
metrics API, and the one module that touches Ray's private APIs. With serving/deployments/ and
serving/app.py, the only code that imports Ray."""
