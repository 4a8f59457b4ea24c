#!/usr/bin/env python3
"""Write through redis-py's Sentinel client and report what was acknowledged.

The client finds the primary the way applications do: it asks the sentinel address it was
given (Understudy's discovery endpoint, or real Redis Sentinel) and reconnects when the
primary moves. Each write is `RPUSH <key> <n>` with n counting up from 1; a write counts as
acknowledged only when the client returned without an error. Stops after --seconds or when
--stop-file exists, then writes a JSON report to --out:

  acked     the n of every acknowledged write, in order
  attempts  writes tried
  gaps      pauses longer than --gap-ms between two acknowledged writes (ms, and which
            primary address the client used before and after)
  addrs     each primary address the client wrote to, with the time of its first write
  errors    failed writes by exception type

Used by Understudy's tests and benchmarks (tools/clients/setup.sh installs redis-py).
"""
import argparse
import json
import os
import time

from redis.sentinel import Sentinel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sentinel", action="append", required=True, help="host:port, repeatable")
    p.add_argument("--master", required=True)
    p.add_argument("--sentinel-password")
    p.add_argument("--key", default="understudy:writes")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--stop-file")
    p.add_argument("--interval-ms", type=float, default=1.0)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=0.5, help="socket timeouts, seconds")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    sentinels = []
    for s in a.sentinel:
        host, port = s.rsplit(":", 1)
        sentinels.append((host, int(port)))
    timeouts = {"socket_timeout": a.timeout, "socket_connect_timeout": a.timeout}
    sentinel_kwargs = dict(timeouts)
    if a.sentinel_password:
        sentinel_kwargs["password"] = a.sentinel_password
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **timeouts)
    client = sentinel.master_for(a.master, **timeouts)
    pool = client.connection_pool

    acked, gaps, addrs, errors = [], [], [], {}
    last_ok, last_addr = None, None
    pending = []  # failed writes since the last acknowledged one: [time ms, error]
    start = time.time()
    n = 0
    while True:
        if time.time() - start > a.seconds or (a.stop_file and os.path.exists(a.stop_file)):
            break
        n += 1
        try:
            client.rpush(a.key, n)
        except Exception as e:  # every failure is a write not acknowledged
            name = type(e).__name__
            errors[name] = errors.get(name, 0) + 1
            if len(pending) < 20:
                pending.append([time.time() * 1000, name])
            time.sleep(0.001)
            continue
        t = time.time()
        where = pool.master_address
        addr = "%s:%s" % where if where else "?"
        acked.append(n)
        if last_ok is not None and (t - last_ok) * 1000 > a.gap_ms:
            gaps.append({"from_ms": last_ok * 1000, "to_ms": t * 1000, "ms": (t - last_ok) * 1000,
                         "before": last_addr, "after": addr, "events": pending})
        pending = []
        if addr != last_addr:
            addrs.append([addr, t * 1000])
        last_ok, last_addr = t, addr
        if a.interval_ms > 0:
            time.sleep(a.interval_ms / 1000)
    report = {"client": "redis-py", "attempts": n, "acked": acked, "gaps": gaps, "addrs": addrs,
              "errors": errors}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
