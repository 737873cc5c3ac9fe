"""A daemon that several users share keeps their sandboxes apart (issue 10, control plane).

A root `sandlock serve` whose socket is opened to everyone (chmod 0666, as an
administrator might for a shared host) serves root's sandbox; another uid, speaking the
wire format straight, sees none of root's sandboxes and cannot change their rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import textwrap
from pathlib import Path

from .conftest import sandlock_env
from .test_daemon import DAEMON, Daemon

OTHER_UID = 65534

# Run by /usr/bin/python3 as OTHER_UID (it cannot enter the project's venv): the replies
# to a `ps` and to a `policy` for root's sandbox, as JSON lines.
_OTHER = textwrap.dedent("""
    import json, socket, sys
    path, box = sys.argv[1], sys.argv[2]
    for req in ({"op": "ps"},
                {"op": "policy", "id": box, "allow": ["127.0.0.2:1"], "deny": []}):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(20)
        s.connect(path)
        s.send(json.dumps(req).encode())
        print(s.recv(65536).decode())
        s.close()
""")


def test_another_uid_neither_sees_nor_changes_roots_sandboxes() -> None:
    """Through a socket opened to everyone, uid 65534 lists none of root's sandboxes and
    a `policy` naming one is refused; root's rules stay as they were."""
    base = Path(tempfile.mkdtemp(prefix="sandlock-shared-"))
    base.chmod(0o755)
    d = Daemon(base / "d.sock")
    box = None
    try:
        os.chmod(d.path, 0o666)
        box = subprocess.Popen(
            [*DAEMON, "run", "--daemon", str(d.path), "--net-allow", "127.0.0.1:1",
             "--", "sleep", "60"],
            env=sandlock_env(),
        )
        d.wait_for_sandboxes(1)
        with d.raw() as s:
            s.send(b'{"op": "ps"}')
            (mine,) = json.loads(s.recv(65536))["sandboxes"]
        res = subprocess.run(
            ["/usr/bin/python3", "-c", _OTHER, str(d.path), mine["id"]],
            user=OTHER_UID, capture_output=True, text=True, timeout=60,
        )
        assert res.returncode == 0, res.stderr
        ps, policy = (json.loads(line) for line in res.stdout.splitlines())
        assert ps == {"ok": True, "sandboxes": []}
        assert policy["ok"] is False and mine["id"] in policy["error"]
        with d.raw() as s:
            s.send(b'{"op": "ps"}')
            (after,) = json.loads(s.recv(65536))["sandboxes"]
        assert after["rules"] == mine["rules"] == 1
    finally:
        if box is not None:
            box.kill()
            box.wait(timeout=30)
        d.stop()
        (base / "d.sock").unlink(missing_ok=True)
        base.rmdir()
