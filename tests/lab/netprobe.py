"""Tiny network probes run inside lab hosts (as `python -c`), used by the lab
tests to see what traffic really gets through."""

from __future__ import annotations

import sys
import textwrap

UDP_RECV = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.settimeout(float(sys.argv[3]))
    try:
        data, peer = s.recvfrom(100)
        print(data.decode())
    except socket.timeout:
        print("TIMEOUT")
""")

UDP_SEND = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(int(float(sys.argv[3]) / 0.05)):
        try:
            s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
        except OSError:
            pass
        time.sleep(0.05)
""")


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def udp_reaches(lab, src: str, dst: str, net: str = "public", port: int = 9999,
                wait: float = 0.6) -> bool:
    """Does a UDP datagram from src reach dst? (one direction only)"""
    import subprocess

    from tandem.lab.shell import ns_prefix
    addr = lab.address(dst, net)
    recv = subprocess.Popen([*ns_prefix(lab.spec.netns(dst)), *py(UDP_RECV, addr, str(port), str(wait))],
                            stdout=subprocess.PIPE, text=True)
    try:
        lab.run(src, py(UDP_SEND, addr, str(port), str(wait)), timeout=10)
        out, _ = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return out.strip() == "hello"


def ping(lab, src: str, dst: str, net: str = "public") -> bool:
    proc = lab.run(src, ["ping", "-c", "1", "-W", "1", lab.address(dst, net)], check=False)
    return proc.returncode == 0


def ping_within(lab, src: str, dst: str, net: str = "public", tries: int = 5) -> bool:
    """A link just brought back up may drop the first frames (bridge port, ARP):
    up to `tries` pings of one second each."""
    return any(ping(lab, src, dst, net) for _ in range(tries))
