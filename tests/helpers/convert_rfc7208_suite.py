#!/usr/bin/env python3
"""Converts the openspf/pyspf RFC 7208 test suite (rfc7208-tests.yml, from
the pyspf 2.0.14 source distribution, test/ directory) into the tab-separated
tests/data/rfc7208-tests.txt that tests/spf.rs reads without a YAML parser.

Usage: convert_rfc7208_suite.py rfc7208-tests.yml rfc7208-tests.LICENSE > rfc7208-tests.txt

Zone data follows the suite driver (pyspf test/testspf.py): type SPF records
become TXT records for a name that has no TXT entry of its own (RFC 7208
dropped type SPF), "NONE" values are dropped, "TIMEOUT" is kept as an entry.
Non-printable bytes and backslashes are written as \\xNN.
"""
import sys
import yaml


def esc(v):
    if isinstance(v, str):
        v = v.encode("utf-8", "surrogateescape")
    out = []
    for b in v:
        if 0x20 <= b < 0x7F and b != 0x5C:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "".join(out)


def zone_lines(name, recs):
    gen = True
    txt = []
    out = []
    for m in recs:
        if m == "TIMEOUT":
            out.append([name, "TIMEOUT"])
            continue
        for t, v in m.items():
            if t in ("TXT", "SPF") and isinstance(v, str):
                v = [v]
            if t == "TXT":
                gen = False
            elif t == "SPF" and gen:
                txt.append(v)
            if t == "SPF" or v == ["NONE"]:
                continue
            if v == "TIMEOUT" or v == ["TIMEOUT"]:
                out.append([name, t, "TIMEOUT"])
            elif t == "MX":
                out.append([name, t, str(v[0]), v[1]])
            elif t == "TXT":
                out.append([name, t] + list(v))
            else:
                out.append([name, t, str(v)])
    if gen:
        for v in txt:
            if v == ["TIMEOUT"]:
                out.append([name, "TXT", "TIMEOUT"])
            elif v != ["NONE"]:
                out.append([name, "TXT"] + list(v))
    return out


def main():
    raw = open(sys.argv[1], "rb").read()
    # The suite has raw non-UTF-8 bytes in some records; keep them as bytes.
    docs = list(yaml.safe_load_all(raw.decode("utf-8", "surrogateescape")))
    print("# The RFC 7208 test suite of openspf.org (release 2014.04, as shipped")
    print("# in pyspf 2.0.14, test/rfc7208-tests.yml), converted by")
    print("# tests/helpers/convert_rfc7208_suite.py. Its licence:")
    print("#")
    for line in open(sys.argv[2]).read().splitlines():
        print("# " + line if line else "#")
    print("#")
    print("# Lines: section<TAB>description | zone<TAB>name<TAB>TYPE<TAB>value...")
    print("# | test<TAB>name<TAB>spec<TAB>helo<TAB>host<TAB>mailfrom<TAB>results")
    print("# (results: acceptable results, comma-separated, preferred first).")
    for d in docs:
        print("section\t" + d["description"])
        for name, recs in (d.get("zonedata") or {}).items():
            for z in zone_lines(name, recs):
                print("zone\t" + "\t".join(esc(x) for x in z))
        for tname, t in d["tests"].items():
            res = t["result"]
            if isinstance(res, str):
                res = [res]
            print("\t".join(["test", tname, esc(str(t.get("spec", ""))),
                             esc(t["helo"]), str(t["host"]), esc(t["mailfrom"]),
                             ",".join(res)]))


main()
