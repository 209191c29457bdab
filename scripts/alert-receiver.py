#!/usr/bin/env python3
"""The local stand-in for a pager and a ticket system: Alertmanager's webhook
receiver for ./deploy.sh. Every notification POSTed to it (any path:
/pager, /ticket) is appended to a JSON-lines file, one line per notification:

  {"received_at": "...Z", "path": "/pager", "status": "firing",
   "alerts": [{"alertname": ..., "severity": ..., "status": ..., "startsAt": ...}],
   "notification": {... Alertmanager's whole payload ...}}

GET /-/healthy answers 200. Usage:

  alert-receiver.py --listen 127.0.0.1:9095 --out /var/lib/tributary/logs/alerts.jsonl
"""

import argparse
import datetime
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # Alertmanager's notifications are far smaller.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9095", help="HOST:PORT")
    parser.add_argument("--out", required=True, help="the JSON-lines file")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._answer(200 if self.path == "/-/healthy" else 404)

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._answer(413)
                return
            try:
                notification = json.loads(self.rfile.read(length))
            except ValueError:
                self._answer(400)
                return
            if not isinstance(notification, dict):
                self._answer(400)
                return
            alerts = notification.get("alerts") or []
            line = {
                "received_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "path": self.path,
                "status": notification.get("status"),
                "alerts": [
                    {
                        "alertname": a.get("labels", {}).get("alertname"),
                        "severity": a.get("labels", {}).get("severity"),
                        "status": a.get("status"),
                        "startsAt": a.get("startsAt"),
                        "endsAt": a.get("endsAt"),
                    }
                    for a in alerts
                    if isinstance(a, dict)
                ],
                "notification": notification,
            }
            with lock:
                out.write(json.dumps(line, sort_keys=True) + "\n")
                out.flush()
            self._answer(200)

        def _answer(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt, *fmt_args):
            sys.stderr.write("alert-receiver: " + (fmt % fmt_args) + "\n")

    server = ThreadingHTTPServer((host, int(port)), Handler)
    sys.stderr.write(f"alert-receiver: listening on {args.listen}, writing {args.out}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
