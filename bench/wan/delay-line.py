#!/usr/bin/env python3
"""A userspace delay line between two network namespaces, for kernels without sch_netem.

    delay-line.py NETNS_A NETNS_B ONE_WAY_DELAY_MS [DEVICE_NAME]
    (DELAY_LINE_OFFLOAD=0: no segmentation offload, one MTU-sized packet per read;
     DELAY_LINE_RT=0: ordinary scheduling instead of SCHED_FIFO)

Creates a TUN device (DEVICE_NAME, default rdwan0) in each of the two named
namespaces (/run/netns/NAME, made by `ip netns add`) and forwards every IP
packet read from one device to the other after a fixed delay, in order. The
caller gives the devices their addresses and brings them up (`ip -n NETNS_A
addr add ...`); this process only moves packets.

Prints one line `ready` once both devices exist. Ends, and the devices with it
(they are not persistent), on SIGTERM/SIGINT or when its stdin closes (the
parent went away). On exit prints one line of counters (JSON) on stderr.

Throughput: reads are batched (every packet waiting on a device per wake-up),
each direction is a FIFO (a fixed delay keeps arrival order, so no heap is
needed), and the queue of one direction is bounded (packets beyond it are
dropped, as a router would). Each packet costs a read and a write here, whatever
its size, so the devices offer TCP segmentation offload: the sending kernel hands
over segments of up to 64 KiB and the receiving one takes them as such, while the
MTU (1500 by default) still shapes every packet on the wire's terms.
"""
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
CLONE_NEWNET = 0x40000000
# The most bytes one direction may hold in flight inside the delay line.
QUEUE_LIMIT_BYTES = 256 * 1024 * 1024
READ_BATCH = 512

libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(name, offload):
    """A TUN device; with `offload`, it takes and hands over TCP segments of up to 64 KiB
    (a virtio-net header before each packet, passed through unchanged), so the kernels on both
    sides cut and merge MTU-sized packets while this process moves a few large ones."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    if offload:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    return fd


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    ns_a, ns_b, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    name = sys.argv[4] if len(sys.argv) > 4 else "rdwan0"
    offload = os.environ.get("DELAY_LINE_OFFLOAD", "1") != "0"
    delay = delay_ms / 1000.0

    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    enter_netns(f"/run/netns/{ns_a}")
    fd_a = open_tun(name, offload)
    enter_netns(f"/run/netns/{ns_b}")
    fd_b = open_tun(name, offload)
    # Back home: the devices stay in the namespace each was created in.
    if libc.setns(home, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back")
    os.close(home)

    # A link does not wait for a CPU: on a busy machine an ordinary process is
    # descheduled for tens of ms at a time, and every packet queued behind it
    # with it. Real-time priority puts it first; it sleeps in select() between
    # packets, and the kernel's RT throttling still bounds it.
    realtime = False
    if os.environ.get("DELAY_LINE_RT", "1") != "0":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            realtime = True
        except OSError:
            pass

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    other = {fd_a: fd_b, fd_b: fd_a}
    queue = {fd_a: deque(), fd_b: deque()}
    queued = {fd_a: 0, fd_b: 0}
    stats = {"forwarded": 0, "bytes": 0, "dropped": 0, "writeRetries": 0, "maxQueueBytes": 0, "lateMsMax": 0.0, "realtime": realtime}
    stdin = sys.stdin.fileno()
    watch = [fd_a, fd_b, stdin]
    now = time.monotonic

    print("ready", flush=True)
    while not stop:
        # Sleep until a device has a packet or the head of a queue is due.
        due = [q[0][0] for q in queue.values() if q]
        timeout = max(0.0, min(due) - now()) if due else None
        try:
            readable, _, _ = select.select(watch, [], [], timeout)
        except InterruptedError:
            continue
        for fd in readable:
            if fd == stdin:
                if not os.read(stdin, 4096):
                    stop.append(1)
                continue
            q = queue[fd]
            t = now() + delay
            for _ in range(READ_BATCH):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if queued[fd] + len(pkt) > QUEUE_LIMIT_BYTES:
                    stats["dropped"] += 1
                    continue
                q.append((t, pkt))
                queued[fd] += len(pkt)
            if queued[fd] > stats["maxQueueBytes"]:
                stats["maxQueueBytes"] = queued[fd]
        t = now()
        for src, q in queue.items():
            dst = other[src]
            while q and q[0][0] <= t:
                at, pkt = q[0]
                try:
                    os.write(dst, pkt)
                    stats["forwarded"] += 1
                    stats["bytes"] += len(pkt)
                except BlockingIOError:
                    stats["writeRetries"] += 1
                    break
                except OSError as e:
                    # The device is down or the stack refused the packet: a lost packet.
                    if e.errno not in (errno.EIO, errno.ENOBUFS, errno.EINVAL):
                        raise
                    stats["dropped"] += 1
                q.popleft()
                queued[src] -= len(pkt)
                late = (t - at) * 1000
                if late > stats["lateMsMax"]:
                    stats["lateMsMax"] = late
    stats["lateMsMax"] = round(stats["lateMsMax"], 3)
    print(json.dumps(stats), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
