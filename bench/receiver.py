#!/usr/bin/env python3
"""A cloud receiver for the sync benchmark: takes the hub's batches over HTTP/1.1 keep-alive,
decompresses gzip (zstd and plain bodies are only counted), counts readings once per idempotency
key, and answers 200. GET /stats answers the counts as JSON.

    bench/receiver.py PORT
"""
import gzip
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
stats = {"requests": 0, "batches": 0, "readings": 0, "body_bytes": 0, "duplicates": 0}
keys = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding")
        key = self.headers.get("Idempotency-Key", "")
        count = 0
        if encoding == "gzip":
            count = len(json.loads(gzip.decompress(body))["readings"])
        elif encoding is None:
            count = len(json.loads(body)["readings"])
        with lock:
            stats["requests"] += 1
            stats["body_bytes"] += length
            if key in keys:
                stats["duplicates"] += 1
            else:
                keys.add(key)
                stats["batches"] += 1
                stats["readings"] += count
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        with lock:
            body = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
