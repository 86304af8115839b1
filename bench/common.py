"""Pieces the bench scripts share (standard library only): a free loopback
port, waiting for a server's port, a process tree's memory from /proc, and
a private Dovecot instance (its users and its config) for the comparisons.

bench/*.py import it directly (their folder is on sys.path when run as a
script or by bench/run); bench/faults/faultlib.py adds bench/ to sys.path.
"""

import os
import signal
import socket
import subprocess
import time


def free_port():
    """A loopback TCP port nobody listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, within=60, pause=0.02):
    """Until 127.0.0.1:port accepts; RuntimeError if proc exits first or
    the port does not open within `within` seconds."""
    end = time.time() + within
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(pause)
    raise RuntimeError("port %d not listening" % port)


def stop_process(proc):
    """SIGTERM, up to 30 s to exit, then SIGKILL; nothing if proc is None
    or already gone."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    """VmRSS of one process in KiB (0 if gone)."""
    return _status_kib(pid, "VmRSS:")


def anon_kib(pid):
    """RssAnon: the process's own memory, without mapped file pages."""
    return _status_kib(pid, "RssAnon:")


def tree_pids(root):
    """root and all its descendants (from /proc's ppid fields)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rfind(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


# ---- a private Dovecot ------------------------------------------------------------


def dovecot_users(d, mbox, owned=()):
    """Makes Dovecot's scratch directories under d and picks its users.
    Dovecot will not serve mail as root: as root, its mail processes run as
    the `dovecot` user, which then gets d, the mbox and the `owned` paths.
    Returns (uid, gid, user, group, login_user)."""
    import grp
    import pwd

    for sub in ("run", "state", "home", "index"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    uid, gid = os.getuid(), os.getgid()
    user = pwd.getpwuid(uid).pw_name
    group = grp.getgrgid(gid).gr_name
    login_user = "dovenull" if uid == 0 else user
    if uid == 0:
        uid, gid = pwd.getpwnam("dovecot").pw_uid, pwd.getpwnam("dovecot").pw_gid
        for dirpath, _, filenames in os.walk(d):
            for x in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                os.chown(x, uid, gid)
        for x in (mbox,) + tuple(owned):
            os.chown(x, uid, gid)
    return uid, gid, user, group, login_user


def dovecot_conf(d, mbox, password, instance, protocol, users, extra, listeners):
    """The config text: protocol `protocol` on loopback, one static user
    with `password` whose INBOX is mbox; `extra` adds settings, `listeners`
    is the body of the `service <protocol>-login` block."""
    uid, gid, user, group, login_user = users
    return f"""
base_dir = {d}/run
state_dir = {d}/state
instance_name = {instance}
protocols = {protocol}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {d}/dovecot.log
first_valid_uid = 0
first_valid_gid = 0
default_login_user = {login_user}
default_internal_user = {user}
default_internal_group = {group}
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home
}}
mail_location = mbox:{d}/home:INBOX={mbox}:INDEX={d}/index
mbox_write_locks = fcntl
{extra}service {protocol}-login {{
  chroot =
{listeners}}}
service anvil {{
  chroot =
}}
service auth {{
  user = {user}
}}
service auth-worker {{
  user = {user}
}}
"""


def start_dovecot(cfg, port, d):
    """Runs `dovecot -F -c cfg` and waits for its port; on failure the
    RuntimeError carries its stderr and the tail of its log."""
    proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
    except RuntimeError as e:
        lp = os.path.join(d, "dovecot.log")
        logtext = open(lp).read()[-2000:] if os.path.exists(lp) else ""
        err = proc.stderr.read().decode() if proc.poll() is not None else ""
        raise RuntimeError(f"dovecot: {e}\n{err}\n{logtext}")
    return proc
