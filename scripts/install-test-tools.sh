#!/usr/bin/env bash
# Installs the programs the test suite talks to (real clients and peers:
# swaks, curl, openssl, prlimit, msmtp, fetchmail, mbsync, ...), with apt, only those missing.
# Safe to run again; does nothing when everything is there.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have swaks    || need+=(swaks)
have curl     || need+=(curl)
have openssl  || need+=(openssl)
have prlimit  || need+=(util-linux)
have python3  || need+=(python3)
have fail2ban-regex || need+=(fail2ban)   # the shipped filter, tests/auth_hardening.rs
# The mail clients of the try-it TLS test (tests/firstrun.rs), in their
# default configurations: msmtp (`auth on`, STARTTLS), fetchmail (STLS).
have msmtp     || need+=(msmtp)
have fetchmail || need+=(fetchmail)
have systemd-analyze || need+=(systemd)   # unit file checks
have mbsync    || need+=(isync)     # the IMAP sync client of tests/imap.rs
# The receiving MX of the outbound interop test (a private instance on a
# loopback high port; the system's own Postfix is not configured or started).
[ -x /usr/sbin/postfix ] || need+=(postfix)
# swaks speaks TLS through these Perl modules (only "recommended" by the
# swaks package, so --no-install-recommends would leave them out).
perl -MNet::SSLeay -MIO::Socket::SSL -e1 >/dev/null 2>&1 \
    || need+=(libnet-ssleay-perl libio-socket-ssl-perl)

# The independent DKIM verifier of tests/dkim.rs and tests/deliverability.rs,
# for whichever python3 is first on PATH (pip, not apt: it may not be Debian's).
if ! python3 -c 'import dkim, nacl.signing' >/dev/null 2>&1; then
    echo "install-test-tools: installing dkimpy, pynacl (pip)" >&2
    python3 -m pip install -q dkimpy pynacl 2>/dev/null \
        || python3 -m pip install -q --break-system-packages dkimpy pynacl
fi

# The IMAP client library of tests/imap.rs (imaplib is in the standard
# library; imapclient is what many Python mail tools use).
if ! python3 -c 'import imapclient' >/dev/null 2>&1; then
    echo "install-test-tools: installing imapclient (pip)" >&2
    python3 -m pip install -q imapclient 2>/dev/null \
        || python3 -m pip install -q --break-system-packages imapclient
fi

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-test-tools: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
echo "install-test-tools: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
