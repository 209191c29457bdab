#!/usr/bin/env python3
"""A tiny batched webhook receiver for Tributary push subscriptions.

It stands in for "the spreadsheet" of a form-processing system: every batch
dispatch POSTs is verified with the reference `standardwebhooks` package and
its events are appended as rows to a CSV file. A request whose signature does
not verify is refused with 401 and changes nothing.

The body dispatch sends is {"subscription": NAME, "events": [StoredEvent...]}
in the proto3 JSON mapping (what grpcurl prints): each element is a
StoredEvent, so the event's own fields sit under "event" (eventId, eventType,
userId, occurredAt, payload) and receivedAt, partition, offset beside it.

Delivery is at least once: a batch can arrive again (after a timeout, a
restart of dispatch, a redrive), so rows are deduplicated by event_id, the
way the README of the project asks receivers to.

    receiver.py --port 8000 --secret-file secret.txt --csv rows.csv

For the project's tests: --log PATH writes one JSON line per request, and
--control enables POST /control to make the receiver fail on purpose or to
change the secrets it verifies with. Secrets are never printed or logged.
"""

import argparse
import base64
import binascii
import csv
import http.server
import json
import os
import sys
import threading
import time

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

CSV_COLUMNS = ["event_id", "event_type", "user_id", "occurred_at", "payload", "batch"]
# dispatch's largest body is 16 MiB (BatchPolicy.max_bytes); anything bigger is refused.
MAX_BODY = 32 * 1024 * 1024
HOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def parse_secret(text):
    """A Standard Webhooks secret: whsec_ + base64 (Webhook() accepts more; we ask for the prefix)."""
    text = text.strip()
    if not text.startswith("whsec_"):
        raise ValueError("a secret starts with whsec_")
    try:
        key = base64.b64decode(text[len("whsec_"):] + "==", validate=False)
    except (binascii.Error, ValueError) as e:
        raise ValueError("the part after whsec_ is not base64") from e
    if not key:
        raise ValueError("the secret is empty")
    return Webhook(text)


def event_of(stored):
    """The Event inside a StoredEvent (proto3 JSON), {} when there is none."""
    ev = stored.get("event")
    return ev if isinstance(ev, dict) else {}


class State:
    """What the handler threads share; one lock guards all of it."""

    def __init__(self, args, secrets):
        self.lock = threading.Lock()
        self.webhooks = [parse_secret(s) for s in secrets]
        self.csv_path = args.csv
        self.log_path = args.log
        self.log_bodies = args.log_bodies
        self.control = args.control
        # Failure injection (--control): the next `fail` verified deliveries
        # are answered `status` (with Retry-After when retry_after is set);
        # fail = -1 fails every delivery until changed. delay: seconds to wait
        # before answering each delivery (to provoke the sender's timeout).
        self.fail = 0
        self.fail_status = 500
        self.retry_after = None
        self.delay = 0.0
        self.seen = set()
        self.rows = 0
        if self.csv_path and os.path.exists(self.csv_path):
            with open(self.csv_path, newline="") as f:
                for row in csv.DictReader(f):
                    self.seen.add(row.get("event_id", ""))
                    self.rows += 1

    def verify(self, body, headers):
        """True when any of the secrets verifies the request (standardwebhooks)."""
        with self.lock:
            webhooks = list(self.webhooks)
        for wh in webhooks:
            try:
                wh.verify(body, headers, json_parse=False)
                return True, None
            except WebhookVerificationError as e:
                error = str(e)
            except Exception as e:  # a malformed header (no comma, bad base64) or body (not UTF-8)
                error = "cannot verify: %s" % type(e).__name__
        return False, error if webhooks else "no secret configured"

    def take_failure(self):
        """The status to answer this verified delivery with, or None for success."""
        with self.lock:
            if self.fail == 0:
                return None
            if self.fail > 0:
                self.fail -= 1
            return self.fail_status, self.retry_after

    def append_rows(self, events, batch_id):
        """Appends the events not seen before; returns how many rows it wrote."""
        new = []
        with self.lock:
            for e in events:
                ev = event_of(e)
                eid = ev.get("eventId", "")
                if eid in self.seen:
                    continue
                self.seen.add(eid)
                new.append([eid, ev.get("eventType", ""), ev.get("userId", ""), ev.get("occurredAt", ""),
                            json.dumps(ev.get("payload", {}), separators=(",", ":"), sort_keys=True), batch_id])
            if new and self.csv_path:
                write_header = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
                with open(self.csv_path, "a", newline="") as f:
                    w = csv.writer(f)
                    if write_header:
                        w.writerow(CSV_COLUMNS)
                    w.writerows(new)
                    f.flush()
                    os.fsync(f.fileno())
            self.rows += len(new)
        return len(new)

    def log(self, entry):
        if not self.log_path:
            return
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.lock:
            with open(self.log_path, "a") as f:
                f.write(line)


class Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 so the sender can keep its connection; every answer carries
    # Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "tributary-webhook-receiver"
    state = None  # set in main()

    def log_message(self, fmt, *args):  # the JSON log (--log) replaces the access log
        pass

    def answer(self, status, obj=None, extra_headers=()):
        body = b"" if obj is None else (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        for k, v in extra_headers:
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        """The request body, or None (after answering) when it cannot be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    self.close_connection = True
                    self.answer(413, {"error": "body too large"})
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self.answer(413, {"error": "body too large"})
            return None
        return self.rfile.read(length)

    def do_GET(self):
        if self.path == "/health":
            self.answer(200, {"ok": True, "rows": self.state.rows})
        else:
            self.answer(404, {"error": "POST batches here; GET /health"})

    def do_POST(self):
        arrived = time.time()
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.answer(400, {"error": "unreadable body"})
            return
        if body is None:
            return
        if self.path == "/control":
            self.control(body, arrived)
        else:
            self.delivery(body, arrived)

    def control(self, body, arrived):
        st = self.state
        if not st.control:
            self.answer(404, {"error": "the control endpoint is off (start with --control)"})
            return
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("not an object")
            webhooks = [parse_secret(s) for s in req["secrets"]] if "secrets" in req else None
            fail = int(req.get("fail", st.fail))
            status = int(req.get("status", 500))
            retry_after = req.get("retry_after")
            delay = float(req.get("delay", st.delay))
            if fail < -1 or not 100 <= status <= 599 or delay < 0:
                raise ValueError("fail >= -1, 100 <= status <= 599, delay >= 0")
        except (ValueError, KeyError, TypeError) as e:
            self.answer(400, {"error": "bad control request: %s" % e})
            return
        with st.lock:
            if webhooks is not None:
                st.webhooks = webhooks
            if "fail" in req or "status" in req:
                st.fail, st.fail_status = fail, status
                st.retry_after = None if retry_after is None else str(retry_after)
            st.delay = delay
            now = {"fail": st.fail, "status": st.fail_status, "retry_after": st.retry_after,
                   "delay": st.delay, "secrets": len(st.webhooks)}
        # The secrets themselves are never logged, only how many there are.
        st.log({"time": round(arrived, 6), "path": "/control", "control": now})
        self.answer(200, now)

    def delivery(self, body, arrived):
        st = self.state
        h = {k: self.headers.get(k, "") for k in HOOK_HEADERS}
        entry = {
            "time": round(arrived, 6),
            "path": self.path,
            "webhook_id": h["webhook-id"],
            "webhook_timestamp": h["webhook-timestamp"],
            # An HMAC, not the secret: logged so a test can verify it again.
            "webhook_signature": h["webhook-signature"],
            "content_type": self.headers.get("Content-Type", ""),
            "bytes": len(body),
        }
        ok, error = st.verify(body, h)
        entry["verified"] = ok
        # The body is read for the log even when the signature failed (which
        # events were refused); only a verified one is written to the CSV.
        subscription, events, bad_body = None, [], None
        try:
            doc = json.loads(body)
            subscription = doc.get("subscription")
            events = doc.get("events")
            if not isinstance(subscription, str) or not isinstance(events, list) or not all(
                    isinstance(e, dict) and isinstance(event_of(e).get("eventId"), str) and event_of(e)["eventId"]
                    for e in events):
                raise ValueError('expected {"subscription": NAME, "events": [StoredEvent with event.eventId...]}')
        except (ValueError, AttributeError) as e:
            subscription, events, bad_body = None, [], "bad body: %s" % e
        if not ok:
            status = 401
        elif bad_body:
            status, error = 400, bad_body
        else:
            status = 200
        entry["subscription"] = subscription
        entry["events"] = len(events)
        entry["event_ids"] = [event_of(e).get("eventId") for e in events]
        entry["user_ids"] = [event_of(e).get("userId") for e in events]
        headers = []
        if status == 200:
            with st.lock:
                delay = st.delay
            if delay:
                time.sleep(delay)
            failure = st.take_failure()
            if failure is not None:
                status, retry_after = failure
                if retry_after is not None:
                    headers.append(("Retry-After", retry_after))
                    entry["retry_after"] = retry_after
                error = "failure injected by /control"
            else:
                entry["new_rows"] = st.append_rows(events, h["webhook-id"])
        if error:
            entry["error"] = error
        if st.log_bodies:
            entry["body"] = body.decode("utf-8", "replace")
        entry["status"] = status
        st.log(entry)
        if status == 200:
            self.answer(200, {"accepted": len(events), "new_rows": entry["new_rows"]}, headers)
        else:
            self.answer(status, {"error": error}, headers)


def read_secrets(args):
    secrets = list(args.secret or [])
    if args.secret_file:
        with open(args.secret_file) as f:
            secrets += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not secrets and os.environ.get("WEBHOOK_SECRET"):
        secrets = os.environ["WEBHOOK_SECRET"].split()
    return secrets


def main():
    p = argparse.ArgumentParser(description="Append each verified batch of a Tributary push subscription to a CSV file.")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--secret", action="append", metavar="WHSEC",
                   help="whsec_... as CreateSubscription returned it; may repeat (any verifying is enough). "
                        "Prefer --secret-file or WEBHOOK_SECRET: a command line is visible to every user")
    p.add_argument("--secret-file", help="secrets, one per line")
    p.add_argument("--csv", default="events.csv", help="rows are appended here (default events.csv)")
    p.add_argument("--log", help="a JSON line per request (for tests)")
    p.add_argument("--log-bodies", action="store_true", help="with --log: the raw body too")
    p.add_argument("--control", action="store_true", help="enable POST /control (tests only)")
    args = p.parse_args()

    try:
        secrets = read_secrets(args)
        if not secrets and not args.control:
            p.error("no secret: give --secret, --secret-file or WEBHOOK_SECRET")
        state = State(args, secrets)
    except (OSError, ValueError) as e:
        # The message never includes the secret's text.
        print("receiver: %s" % e, file=sys.stderr)
        sys.exit(64)
    Handler.state = state
    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print("listening on http://%s:%d (%d secret%s, rows to %s%s)" % (
        host, port, len(state.webhooks), "" if len(state.webhooks) == 1 else "s", args.csv,
        ", control on" if args.control else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
