#!/usr/bin/env python3
# Broker throughput for BENCHMARKS.md "Across nodes": usage
#   broker_rate.py redis|nats PORT BROKER_PID MESSAGES SIZE SUBSCRIBERS
# Publishes N messages of SIZE bytes on one channel through one pipelined connection with S
# subscribers (each a connection reading everything); prints msgs/s and the broker's CPU per msg.
import os, socket, subprocess, sys, threading, time
kind, port, pid, n, size, subs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
payload = b"x" * size
def cpu():
    f = open(f"/proc/{pid}/stat").read().split()
    return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")
def conn():
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "nats":
        s.recv(4096); s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        buf = b""
        while b"PONG" not in buf: buf += s.recv(4096)
    return s
def sub(done, counts, i):
    s = conn()
    s.sendall(b"SUBSCRIBE bench\r\n" if kind == "redis" else b"SUB bench 1\r\nPING\r\n")
    marker = b"$7\r\nmessage" if kind == "redis" else b"MSG "
    got, tail = 0, b""
    ready.release()
    while got < n:
        d = s.recv(1 << 20)
        if not d: break
        # The kept tail is shorter than the marker: a marker split by the read is counted once.
        chunk = tail + d
        got += chunk.count(marker)
        tail = chunk[-(len(marker) - 1):]
    counts[i] = got
ready = threading.Semaphore(0)
counts = [0] * subs
ts = [threading.Thread(target=sub, args=(None, counts, i)) for i in range(subs)]
for t in ts: t.start()
for _ in range(subs): ready.acquire()
time.sleep(0.5)
if kind == "redis":
    one = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$%d\r\n%s\r\n" % (size, payload)
else:
    one = b"PUB bench %d\r\n%s\r\n" % (size, payload)
p = conn()
reader_done = [0]
def drain():
    # Redis answers each PUBLISH; NATS answers nothing (verbose off): read the final PONG.
    want = n if kind == "redis" else 1
    got = 0
    while got < want:
        d = p.recv(1 << 20)
        got += d.count(b":") if kind == "redis" else d.count(b"PONG")
    reader_done[0] = 1
r = threading.Thread(target=drain); r.start()
c0, t0 = cpu(), time.time()
batch = one * 1000
for _ in range(n // 1000): p.sendall(batch)
if kind == "nats": p.sendall(b"PING\r\n")
r.join()
for t in ts: t.join(timeout=60)
t1, c1 = time.time(), cpu()
print(f"{kind} size={size} subs={subs} msgs={n}: {n/(t1-t0):,.0f} publishes/s, {n*subs/(t1-t0):,.0f} deliveries/s, broker {1e6*(c1-c0)/n:.2f} us CPU per publish, received {sum(counts)}/{n*subs}")
