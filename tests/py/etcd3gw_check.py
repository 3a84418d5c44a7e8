"""etcd3gw (PyPI), a third-party client of etcd's HTTP/JSON gateway, run unchanged against eden.

Usage: etcd3gw_check.py HOST PORT [CA CERT KEY]   (the last three for a member with TLS on)
Exits non-zero, with the failed check, unless every step answers as etcd's gateway would.
"""
import sys
import threading

import etcd3gw


def check(what, got, want):
    if got != want:
        sys.exit(f"FAILED {what}: got {got!r}, want {want!r}")
    print(f"ok {what}")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    tls = {}
    if len(sys.argv) == 6:
        tls = dict(protocol="https", ca_cert=sys.argv[3], cert_cert=sys.argv[4], cert_key=sys.argv[5])
    c = etcd3gw.client(host=host, port=port, timeout=10, **tls)
    check("status has a version", bool(c.status().get("version")), True)
    check("put", c.put("/py/a", "1"), True)
    check("get", c.get("/py/a"), [b"1"])
    check("get_prefix", [v for v, _ in c.get_prefix("/py/")], [b"1"])
    # create is a txn: put only if the key does not exist.
    check("create new", c.create("/py/b", "1"), True)
    check("create existing", c.create("/py/b", "x"), False)
    # replace is a compare-and-set txn on the value.
    check("replace matching", c.replace("/py/b", "1", "2"), True)
    check("replace stale", c.replace("/py/b", "1", "3"), False)
    check("after replace", c.get("/py/b"), [b"2"])
    lease = c.lease(ttl=60)
    check("lease ttl", lease.ttl() > 0, True)
    check("put on lease", c.put("/py/l", "x", lease=lease), True)
    check("lease keys", lease.keys(), [b"/py/l"])
    check("lease refresh", lease.refresh() > 0, True)
    # A streamed watch sees a put made after it started.
    events, cancel = c.watch("/py/w")
    seen = []

    def consume():
        for ev in events:
            seen.append(ev)
            break

    t = threading.Thread(target=consume)
    t.start()
    # The watch is created when its stream opens; write until the event arrives.
    for _ in range(100):
        c.put("/py/w", "hello")
        t.join(0.1)
        if seen:
            break
    cancel()
    check("watch event", seen[0]["kv"]["value"] if seen else None, b"hello")
    check("delete", c.delete("/py/a"), True)
    check("deleted", c.get("/py/a"), [])
    check("lease revoke", lease.revoke(), True)
    check("lease key gone", c.get("/py/l"), [])
    check("member list", len(c.members()) >= 1, True)
    print("all checks passed")


main()
