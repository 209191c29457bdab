#!/usr/bin/env python3
"""Tests of receiver.py as a black box: real HTTP on loopback, requests signed
with the reference standardwebhooks package (Webhook.sign), as dispatch signs.

    python3 test_receiver.py        # needs standardwebhooks (requirements.txt)
"""

import base64
import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from standardwebhooks.webhooks import Webhook

HERE = os.path.dirname(os.path.abspath(__file__))


def new_secret():
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def stored_event(eid, etype="form.submitted", user="u1", payload=None):
    """A StoredEvent in the proto3 JSON mapping, as grpcurl and dispatch print it."""
    return {
        "event": {"eventId": eid, "eventType": etype, "source": "test", "userId": user,
                  "occurredAt": "2025-01-02T03:04:05.123456Z", "payload": payload or {"n": 1}},
        "receivedAt": "2025-01-02T03:04:05.200Z", "partition": 3, "offset": "42",
        "traceId": "0" * 32, "schemaVersion": 0,
    }


def body_of(events, subscription="forms"):
    return json.dumps({"subscription": subscription, "events": events}).encode()


def signed_headers(secret_list, msg_id, body, when=None):
    ts = when or datetime.now(tz=timezone.utc)
    sigs = " ".join(Webhook(s).sign(msg_id, ts, body.decode()) for s in secret_list)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(ts.timestamp())),
            "webhook-signature": sigs, "content-type": "application/json"}


class Receiver:
    def __init__(self, tmp, secret, control=True):
        self.csv = os.path.join(tmp, "rows.csv")
        self.log = os.path.join(tmp, "requests.jsonl")
        secret_file = os.path.join(tmp, "secret")
        with open(secret_file, "w") as f:
            f.write(secret + "\n")
        cmd = [sys.executable, os.path.join(HERE, "receiver.py"), "--port", "0", "--secret-file", secret_file,
               "--csv", self.csv, "--log", self.log, "--log-bodies"]
        if control:
            cmd.append("--control")
        self.out = open(os.path.join(tmp, "receiver.out"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            self.out.seek(0)
            first = self.out.readline()
            if first.startswith("listening on "):
                self.url = first.split()[2]
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("receiver did not start: %r" % first)
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.out.close()

    def post(self, path, body, headers):
        req = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def control(self, obj):
        return self.post("/control", json.dumps(obj).encode(), {"content-type": "application/json"})

    def rows(self):
        if not os.path.exists(self.csv):
            return []
        with open(self.csv, newline="") as f:
            return list(csv.DictReader(f))

    def log_lines(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f]


class ReceiverTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.secret = new_secret()
        self.rx = Receiver(self.tmp.name, self.secret)

    def tearDown(self):
        self.rx.stop()
        self.tmp.cleanup()

    def deliver(self, events, msg_id=None, secret_list=None, when=None):
        body = body_of(events)
        return self.rx.post("/hook", body, signed_headers(secret_list or [self.secret], msg_id or "msg_" + secrets.token_hex(8), body, when))

    def test_good_signature_appends_rows_once(self):
        events = [stored_event("e1", user="alice", payload={"form": "a", "x": [1, 2]}), stored_event("e2", user="bob")]
        status, _, _ = self.deliver(events, msg_id="msg_1")
        self.assertEqual(status, 200)
        rows = self.rx.rows()
        self.assertEqual([r["event_id"] for r in rows], ["e1", "e2"])
        self.assertEqual(rows[0]["event_type"], "form.submitted")
        self.assertEqual(rows[0]["user_id"], "alice")
        self.assertEqual(rows[0]["occurred_at"], "2025-01-02T03:04:05.123456Z")
        self.assertEqual(json.loads(rows[0]["payload"]), {"form": "a", "x": [1, 2]})
        self.assertEqual(rows[0]["batch"], "msg_1")
        # The same batch again (at least once): no second row.
        status, _, body = self.deliver(events, msg_id="msg_1")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["new_rows"], 0)
        self.assertEqual(len(self.rx.rows()), 2)
        entry = self.rx.log_lines()[-1]
        self.assertEqual(entry["event_ids"], ["e1", "e2"])
        self.assertEqual(entry["user_ids"], ["alice", "bob"])
        self.assertTrue(entry["verified"])
        self.assertEqual(entry["webhook_id"], "msg_1")
        self.assertEqual(entry["status"], 200)
        self.assertEqual(entry["subscription"], "forms")

    def test_other_secret_is_refused(self):
        status, _, _ = self.deliver([stored_event("e1")], secret_list=[new_secret()])
        self.assertEqual(status, 401)
        self.assertEqual(self.rx.rows(), [])
        entry = self.rx.log_lines()[-1]
        self.assertFalse(entry["verified"])
        self.assertEqual(entry["status"], 401)
        # The refused events are named in the log, and nothing else changed.
        self.assertEqual(entry["event_ids"], ["e1"])
        self.assertNotIn("new_rows", entry)

    def test_tampered_body_and_bad_headers_are_refused(self):
        body = body_of([stored_event("e1")])
        headers = signed_headers([self.secret], "msg_t", body)
        self.assertEqual(self.rx.post("/hook", body.replace(b"e1", b"e9"), headers)[0], 401)
        for broken in ({"webhook-signature": "garbage"}, {"webhook-signature": "v1,!!notbase64"},
                       {"webhook-id": "msg_other"}, {"webhook-timestamp": str(int(time.time()) + 1)}):
            self.assertEqual(self.rx.post("/hook", body, {**headers, **broken})[0], 401, broken)
        missing = {k: v for k, v in headers.items() if k != "webhook-signature"}
        self.assertEqual(self.rx.post("/hook", body, missing)[0], 401)
        old = datetime.now(tz=timezone.utc) - timedelta(minutes=10)
        self.assertEqual(self.deliver([stored_event("e1")], when=old)[0], 401)
        self.assertEqual(self.rx.rows(), [])

    def test_rotation_two_signatures_one_valid(self):
        status, _, _ = self.deliver([stored_event("e1")], secret_list=[new_secret(), self.secret])
        self.assertEqual(status, 200)
        status, _, _ = self.deliver([stored_event("e2")], secret_list=[self.secret, new_secret()])
        self.assertEqual(status, 200)
        self.assertEqual(len(self.rx.rows()), 2)

    def test_verified_but_not_a_batch_is_400(self):
        for body in (b'{"hello": 1}', b'[1]', b'not json', b'{"subscription": "s", "events": [1]}',
                     b'{"subscription": "s", "events": [{"event": "x"}]}',
                     b'{"subscription": "s", "events": [{"event": {"eventType": "no.id"}}]}'):
            status, _, _ = self.rx.post("/hook", body, signed_headers([self.secret], "msg_x", body))
            self.assertEqual(status, 400, body)
        # Not UTF-8: the library cannot even verify it.
        body = b'\xff\xfe'
        status, _, _ = self.rx.post("/hook", body, signed_headers([self.secret], "msg_x", body.decode("latin-1").encode()))
        self.assertEqual(status, 401)
        self.assertEqual(self.rx.rows(), [])
        self.assertEqual(self.deliver([stored_event("e1")])[0], 200)

    def test_control_fail_then_succeed(self):
        self.assertEqual(self.rx.control({"fail": 3, "status": 500})[0], 200)
        codes = [self.deliver([stored_event("e1")], msg_id="msg_r")[0] for _ in range(4)]
        self.assertEqual(codes, [500, 500, 500, 200])
        self.assertEqual(len(self.rx.rows()), 1)
        # A refused signature does not use up an injected failure.
        self.rx.control({"fail": 1, "status": 503})
        self.assertEqual(self.deliver([stored_event("e2")], secret_list=[new_secret()])[0], 401)
        self.assertEqual(self.deliver([stored_event("e2")])[0], 503)
        self.assertEqual(self.deliver([stored_event("e2")])[0], 200)

    def test_control_429_retry_after_and_410(self):
        self.rx.control({"status": 429, "retry_after": 2, "fail": 1})
        status, headers, _ = self.deliver([stored_event("e1")])
        self.assertEqual(status, 429)
        self.assertEqual({k.lower(): v for k, v in headers.items()}.get("retry-after"), "2")
        self.assertEqual(self.rx.log_lines()[-1]["retry_after"], "2")
        self.rx.control({"status": 410, "fail": 1})
        self.assertEqual(self.deliver([stored_event("e1")])[0], 410)
        self.assertEqual(self.deliver([stored_event("e1")])[0], 200)
        # fail -1: every delivery until changed.
        self.rx.control({"fail": -1, "status": 502})
        self.assertEqual([self.deliver([stored_event("e3")])[0] for _ in range(3)], [502, 502, 502])
        self.rx.control({"fail": 0})
        self.assertEqual(self.deliver([stored_event("e3")])[0], 200)

    def test_control_secrets(self):
        new = new_secret()
        status, _, body = self.rx.control({"secrets": [new]})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["secrets"], 1)
        self.assertEqual(self.deliver([stored_event("e1")])[0], 401)
        self.assertEqual(self.deliver([stored_event("e1")], secret_list=[new])[0], 200)
        self.rx.control({"secrets": [self.secret, new]})
        self.assertEqual(self.deliver([stored_event("e2")])[0], 200)
        self.assertEqual(self.deliver([stored_event("e3")], secret_list=[new])[0], 200)
        self.assertEqual(self.rx.control({"secrets": ["not-a-secret"]})[0], 400)
        self.assertEqual(self.rx.control({"fail": "x"})[0], 400)
        # Secrets never reach the log or the output.
        with open(self.rx.log) as f:
            log = f.read()
        self.rx.out.seek(0)
        out = self.rx.out.read()
        for s in (self.secret, new):
            key = s[len("whsec_"):]
            self.assertNotIn(key, log)
            self.assertNotIn(key, out)

    def test_health(self):
        with urllib.request.urlopen(self.rx.url + "/health", timeout=5) as r:
            self.assertEqual(r.status, 200)


class ControlOffTest(unittest.TestCase):
    def test_control_is_off_without_flag(self):
        with tempfile.TemporaryDirectory() as tmp:
            rx = Receiver(tmp, new_secret(), control=False)
            try:
                self.assertEqual(rx.control({"fail": 3})[0], 404)
            finally:
                rx.stop()

    def test_no_secret_exits_64_and_bad_secret_is_not_printed(self):
        env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
        r = subprocess.run([sys.executable, os.path.join(HERE, "receiver.py"), "--port", "0"],
                           capture_output=True, text=True, env=env, timeout=10)
        self.assertNotEqual(r.returncode, 0)
        r = subprocess.run([sys.executable, os.path.join(HERE, "receiver.py"), "--port", "0", "--secret", "hunter2-secret"],
                           capture_output=True, text=True, env=env, timeout=10)
        self.assertEqual(r.returncode, 64)
        self.assertNotIn("hunter2", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
