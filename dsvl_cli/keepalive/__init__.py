"""`--keep-alive`: the model kept warm in a private server between calls. Above the engine and
serve (it runs serve's app over the engine): registry.py (keys, run files, probes, ps/stop),
client.py (find or start the server, a RemoteEngine over its unix socket), server.py (the server
process). Nothing below imports this package."""
