"""Who answers for an address, as seen from a lab host: ARP requests every few
milliseconds on a raw packet socket, one JSON line per reply with
CLOCK_MONOTONIC and the answering MAC.

Used by `tandem bench failover` to time a VIP move (keepalived reference row):
the VIP has moved at the first reply from the new holder's MAC. ARP is the
earliest thing a client sees of a moved address (the new holder answers the
moment the address is on its interface) and needs no service behind it.

Run inside a lab host: `python -m tandem.bench.arpprobe --iface pub0 --source IP
--target VIP --out FILE [--interval 0.01] [--duration S]`.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import time

ETH_P_ARP = 0x0806


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def request_frame(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    eth = b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, socket.inet_aton(src_ip),
                      b"\x00" * 6, socket.inet_aton(target_ip))
    return eth + arp


def parse_arp(frame: bytes) -> tuple[int, str, str, str] | None:
    """(op, sender MAC, sender IP, target IP) of an ARP frame, or None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    _, _, _, _, op, sha, spa, _, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    return op, sha.hex(":"), socket.inet_ntoa(spa), socket.inet_ntoa(tpa)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", default="pub0")
    ap.add_argument("--source", required=True, help="this host's address on --iface")
    ap.add_argument("--target", required=True, help="the address to probe (the VIP)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--duration", type=float, default=3600)
    args = ap.parse_args()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    s.bind((args.iface, ETH_P_ARP))
    my_mac = s.getsockname()[4][:6]
    frame = request_frame(my_mac, args.source, args.target)
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 (open for the whole run)
    end = monotonic() + args.duration
    next_send = 0.0
    while (now := monotonic()) < end:
        if now >= next_send:
            try:
                s.send(frame)
            except OSError as e:  # link down for a moment: note it and go on
                out.write(json.dumps({"t": now, "error": str(e)}) + "\n")
            next_send = now + args.interval
        ready, _, _ = select.select([s], [], [], max(0.0, next_send - monotonic()))
        if not ready:
            continue
        pkt = s.recv(2048)
        t = monotonic()
        arp = parse_arp(pkt)
        if arp is None:
            continue
        op, mac, spa, tpa = arp
        if op == 2 and spa == args.target and tpa == args.source:
            out.write(json.dumps({"t": t, "mac": mac, "kind": "reply"}) + "\n")
        elif spa == args.target and tpa == args.target:  # gratuitous ARP of a new holder
            out.write(json.dumps({"t": t, "mac": mac, "kind": "garp"}) + "\n")
    out.close()


if __name__ == "__main__":
    main()
