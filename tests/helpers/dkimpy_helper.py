#!/usr/bin/env python3
"""Independent DKIM checks for pimail's tests, with dkimpy (pip: dkimpy,
pynacl) and openssl.

  dkimpy_helper.py verify MESSAGE RECORDS.json   -> JSON list of booleans,
      one per DKIM-Signature header, verified by dkimpy against the records
      (name -> TXT value) instead of real DNS.
  dkimpy_helper.py sign MESSAGE OUT_PREFIX DOMAIN -> signs MESSAGE with fresh
      Ed25519 and RSA keys in relaxed/relaxed and simple/simple, writes
      OUT_PREFIX.relaxed and OUT_PREFIX.simple, prints the records as JSON.
"""
import base64
import json
import os
import subprocess
import sys

try:
    import dkim
    import nacl.signing
except ImportError as e:
    sys.stderr.write(
        "MISSING: %s; install with `pip install dkimpy pynacl`\n" % e)
    sys.exit(3)


def verify(msg_path, records_path):
    msg = open(msg_path, "rb").read()
    records = json.load(open(records_path))

    def dnsfunc(name, timeout=5):
        v = records.get(name.decode().rstrip("."))
        return v.encode() if v is not None else None

    d = dkim.DKIM(msg)
    n = sum(1 for (k, _) in d.headers if k.lower() == b"dkim-signature")

    def one(i):
        # dkimpy raises on some failures (body hash mismatch) and returns
        # False on others; both are a failed verification here.
        try:
            return bool(d.verify(idx=i, dnsfunc=dnsfunc))
        except dkim.DKIMException:
            return False

    print(json.dumps([one(i) for i in range(n)]))


def sign(msg_path, out_prefix, domain):
    msg = open(msg_path, "rb").read()
    seed = os.urandom(32)
    ed_priv = base64.b64encode(seed)
    ed_pub = base64.b64encode(bytes(nacl.signing.SigningKey(seed).verify_key))
    rsa_pem = subprocess.check_output(
        ["openssl", "genrsa", "-traditional", "2048"], stderr=subprocess.DEVNULL)
    spki = subprocess.check_output(
        ["openssl", "rsa", "-pubout", "-outform", "DER"], input=rsa_pem,
        stderr=subprocess.DEVNULL)
    dom = domain.encode()
    for name, canon in [("relaxed", (b"relaxed", b"relaxed")),
                        ("simple", (b"simple", b"simple"))]:
        s1 = dkim.sign(msg, b"py-ed", dom, ed_priv,
                       signature_algorithm=b"ed25519-sha256", canonicalize=canon)
        s2 = dkim.sign(msg, b"py-rsa", dom, rsa_pem, canonicalize=canon)
        with open(out_prefix + "." + name, "wb") as f:
            f.write(s1 + s2 + msg)
    print(json.dumps({
        "py-ed._domainkey." + domain: "v=DKIM1; k=ed25519; p=" + ed_pub.decode(),
        "py-rsa._domainkey." + domain: "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode(),
    }))


if __name__ == "__main__":
    if sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "sign":
        sign(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("unknown command")
