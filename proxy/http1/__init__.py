"""A lean HTTP/1.1 layer for the data path: the listener clients talk to, and the connections
cutover keeps to the platforms.

Why not aiohttp here: on the benchmark (bench/README.md) aiohttp's server and client machinery
cost ~110 of the ~150 µs of CPU a pass-through request took; the request itself (parse, route,
forward, relay) needs a fraction of that. Both halves parse with llhttp through httptools, in its
strict mode: conflicting Content-Length / Transfer-Encoding, duplicate Content-Length, obs-fold,
bare LF and invalid characters are parse errors, never guessed at (PITFALLS.md "Correct
forwarding"). aiohttp still serves the admin API and the demo platforms, where speed does not
matter.

    server.py   HttpServer: connections, limits, deadlines, keep-alive, pipelining; Request and
                Responder, the two things a handler sees
    client.py   Pool per (upstream, role): bounded keep-alive connections; Answer, the response a
                caller reads; errors mapped to proxy.errors' Upstream* in this module only
    wire.py     what both halves share: message heads, reason phrases, write flow control
"""
