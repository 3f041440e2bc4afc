# The test "internet": run inside a test network namespace by
# tests/e2e/little_internet. Serves HTTP on every address given with
# --http (answering "hello from ADDR") and DNS (UDP and TCP) on --dns,
# answering A records from --name NAME=ADDR (NXDOMAIN for other names, an
# empty answer for other types). Prints "ready" once everything listens.
import argparse
import http.server
import socket
import socketserver
import struct
import sys
import threading

parser = argparse.ArgumentParser()
parser.add_argument("--http", action="append", default=[])
parser.add_argument("--dns")
parser.add_argument("--name", action="append", default=[])
args = parser.parse_args()
names = {}
for entry in args.name:
    name, addr = entry.split("=", 1)
    names[name.lower().rstrip(".")] = addr


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from %s\n" % self.server.server_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class HttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def answer(query):
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while pos < len(query) and query[pos] != 0:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    question = query[12 : pos + 5]
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    name = ".".join(labels).lower()
    rd = flags & 0x0100
    if name not in names:
        return struct.pack("!HHHHHH", qid, 0x8003 | rd, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", qid, 0x8000 | rd, 1, 0, 0, 0) + question
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(names[name])
    return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 1, 0, 0) + question + rr


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        reply = answer(data)
        if reply:
            sock.sendto(reply, peer)


def serve_tcp_conn(conn):
    with conn:
        while True:
            head = conn.recv(2)
            if len(head) < 2:
                return
            (n,) = struct.unpack("!H", head)
            data = b""
            while len(data) < n:
                more = conn.recv(n - len(data))
                if not more:
                    return
                data += more
            reply = answer(data)
            if reply:
                conn.sendall(struct.pack("!H", len(reply)) + reply)


def serve_tcp(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn,), daemon=True).start()


threads = []
for addr in args.http:
    server = HttpServer((addr, 80), Hello)
    threads.append(threading.Thread(target=server.serve_forever, daemon=True))
if args.dns:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.dns, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((args.dns, 53))
    tcp.listen(16)
    threads.append(threading.Thread(target=serve_udp, args=(udp,), daemon=True))
    threads.append(threading.Thread(target=serve_tcp, args=(tcp,), daemon=True))
for t in threads:
    t.start()
print("ready", flush=True)
for t in threads:
    t.join()
