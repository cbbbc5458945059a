#!/usr/bin/env python3
"""A minimal stand-in for `curl -s [-H H] [-d BODY] URL` on machines without curl (the GPU image)."""
import sys
import urllib.error
import urllib.request

args = sys.argv[1:]
headers, data, url, fail = {}, None, None, False
i = 0
while i < len(args):
    a = args[i]
    if a in ("-H", "--header"):
        k, _, v = args[i + 1].partition(":")
        headers[k.strip()] = v.strip()
        i += 2
    elif a in ("-d", "--data"):
        data = args[i + 1].encode()
        i += 2
    elif a.startswith("-"):
        fail = fail or ("f" in a[1:] and not a.startswith("--"))
        i += 1
    else:
        url = a
        i += 1
try:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=300) as r:
        sys.stdout.write(r.read().decode("utf-8", "replace"))
except urllib.error.HTTPError as e:
    if fail:
        sys.exit(22)
    sys.stdout.write(e.read().decode("utf-8", "replace"))
except Exception:
    sys.exit(7)
