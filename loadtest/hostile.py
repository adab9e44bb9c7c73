#!/usr/bin/env python3
"""Hostile traffic against a running clickedge edge, for loadtest/under-attack.

    loadtest/hostile.py HOST:PORT SECONDS [--json FILE]

Runs the shapes of tests/hostile_input.rs as continuous traffic, each in
its own threads, from loopback source addresses other than 127.0.0.1 (so
the measured client on 127.0.0.1 is a different client for the rate
limiter): slowloris (partial heads dripped a byte a second), header bombs
(one 20 KB header; 100 headers), 404 code scans (one address, keep-alive;
and a wide scan rotating over 250 addresses, a new connection each),
rapid connect/close and connect-and-say-nothing, junk bytes, and HTTP/2
rapid reset. Prints what it sent and the answers it got, by kind.
HOSTILE_SHAPES=slowloris,header_bomb,scan,rapid_connect,junk,h2_rapid_reset
picks some of them (default: all).
"""
import json
import os
import random
import socket
import string
import sys
import threading
import time
from collections import Counter

target_host, target_port = sys.argv[1].rsplit(":", 1)
target = (target_host, int(target_port))
seconds = float(sys.argv[2])
json_out = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--json" else None
deadline = time.monotonic() + seconds
stats = Counter()
lock = threading.Lock()


def count(key, n=1):
    with lock:
        stats[key] += n


def running():
    return time.monotonic() < deadline


def conn(source="127.0.0.2", timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(target)
    return s


def status_of(data):
    try:
        return data.split(b" ", 2)[1].decode()
    except Exception:
        return "none"


def read_answer(s):
    """Reads one response head (and drops the body); returns the status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return status_of(buf), buf


def code():
    return "".join(random.choices(string.ascii_letters + string.digits, k=8))


def slowloris(n):
    socks = []
    while running():
        while len(socks) < n and running():
            try:
                s = conn("127.0.0.3")
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: edge\r\n")
                socks.append(s)
                count("slowloris_opened")
            except OSError:
                count("slowloris_connect_failed")
                time.sleep(0.05)
        time.sleep(1.0)
        alive = []
        for s in socks:
            try:
                s.sendall(b"X")
                alive.append(s)
            except OSError:
                count("slowloris_dropped_by_server")
                s.close()
        socks = alive
    for s in socks:
        s.close()


def header_bomb():
    big = b"GET /x HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * 20000 + b"\r\nConnection: close\r\n\r\n"
    many = b"GET /x HTTP/1.1\r\nHost: edge\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(100)) + b"Connection: close\r\n\r\n"
    while running():
        for name, req in (("big", big), ("many", many)):
            try:
                s = conn("127.0.0.4")
                s.sendall(req)
                st, _ = read_answer(s)
                count(f"header_bomb_{name}_{st}")
                s.close()
            except OSError:
                count(f"header_bomb_{name}_closed")


def scan_one_client():
    s = None
    while running():
        try:
            if s is None:
                s = conn("127.0.0.5")
            s.sendall(f"GET /{code()} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
            st, _ = read_answer(s)
            count(f"scan_keepalive_{st}")
            if st == "none":
                s.close()
                s = None
        except OSError:
            count("scan_keepalive_closed")
            s = None


def scan_wide():
    i = 0
    while running():
        i += 1
        src = f"127.0.1.{1 + i % 250}"
        try:
            s = conn(src)
            s.sendall(f"GET /{code()} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode())
            st, _ = read_answer(s)
            count(f"scan_wide_{st}")
            s.close()
        except OSError:
            count("scan_wide_closed")


def rapid_connect():
    while running():
        try:
            s = conn("127.0.0.6")
            s.close()
            count("rapid_connect_close")
            s = conn("127.0.0.6")
            s.sendall(b"GE")  # and then nothing: left for the head deadline
            count("rapid_connect_partial")
            threading.Timer(2.0, s.close).start()
        except OSError:
            count("rapid_connect_failed")


def junk():
    rnd = random.Random(7)
    while running():
        try:
            s = conn("127.0.0.7")
            s.sendall(bytes(rnd.getrandbits(8) for _ in range(65536)))
            st, _ = read_answer(s)
            count(f"junk_{st}")
            s.close()
        except OSError:
            count("junk_closed")


def h2_frame(kind, flags, stream, payload):
    n = len(payload)
    return bytes([n >> 16 & 255, n >> 8 & 255, n & 255, kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_rapid_reset():
    path = b"/" + b"x" * 8
    block = bytes([0x82, 0x86, 0x04, len(path)]) + path + bytes([0x01, 4]) + b"edge"
    while running():
        try:
            s = conn("127.0.0.8")
            out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"")
            for i in range(200):
                sid = 2 * i + 1
                out += h2_frame(1, 0x5, sid, block) + h2_frame(3, 0, sid, (8).to_bytes(4, "big"))
            s.sendall(out)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            count("h2_rapid_reset_goaway" if b"\x00\x00\x00\x0b" in got else "h2_rapid_reset_other")
            s.close()
        except OSError:
            count("h2_rapid_reset_closed")


shapes = {
    "slowloris": [lambda: slowloris(200)],
    "header_bomb": [header_bomb],
    "scan": [scan_one_client, scan_wide, scan_wide],
    "rapid_connect": [rapid_connect],
    "junk": [junk],
    "h2_rapid_reset": [h2_rapid_reset],
}
# HOSTILE_SHAPES=junk,scan picks some (default: all).
chosen = os.environ.get("HOSTILE_SHAPES", ",".join(shapes)).split(",")
threads = [threading.Thread(target=f) for name in chosen for f in shapes[name]]
for t in threads:
    t.daemon = True
    t.start()
for t in threads:
    t.join(seconds + 15)
summary = dict(sorted(stats.items()))
print("hostile traffic:", json.dumps(summary))
if json_out:
    with open(json_out, "w") as f:
        json.dump(summary, f)
