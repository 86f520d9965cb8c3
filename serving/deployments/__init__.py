"""Ray Serve deployments: each wraps one engine or service object and holds no logic of its own."""
