#!/usr/bin/env python3
"""A sessiond client in Python with nothing but the standard library.

Create a session, read it, change it with a conditional update that retries
when another writer got there first (412), and rotate its id at login:

    python3 examples/python_client.py --url http://127.0.0.1:7700 [--token TOKEN]

The demo prints one JSON line per step. `tests/tests/docs.rs` runs it
against a real node.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request


class SessiondError(Exception):
    """An error answer: its HTTP status and the API's `error` object."""

    def __init__(self, status, error):
        super().__init__(f"{status} {error.get('code')}: {error.get('message')}")
        self.status = status
        self.code = error.get("code")
        self.current_version = error.get("current_version")


class Sessions:
    """The session routes of sessiond's HTTP API v1."""

    def __init__(self, url, token=None, timeout=5.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method, path, body=None, headers=None):
        request = urllib.request.Request(self.url + path, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, data, timeout=self.timeout) as response:
                text = response.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            try:
                error = json.loads(err.read())["error"]
            except (ValueError, KeyError):
                error = {"code": None, "message": err.reason}
            raise SessiondError(err.code, error) from None

    def create(self, data, ttl_secs=None, user=None):
        body = {"data": data}
        if ttl_secs is not None:
            body["ttl_secs"] = ttl_secs
        if user is not None:
            body["user"] = user
        return self._call("POST", "/v1/sessions", body)

    def get(self, session_id):
        """The session, or None when it does not exist (or expired)."""
        try:
            return self._call("GET", f"/v1/sessions/{session_id}")
        except SessiondError as err:
            if err.status == 404:
                return None
            raise

    def put(self, session_id, data, version=None):
        """Replaces the data; with `version`, only if the session is at it."""
        headers = {"If-Match": f'"{version}"'} if version is not None else {}
        return self._call("PUT", f"/v1/sessions/{session_id}", {"data": data}, headers)

    def update(self, session_id, change, attempts=10):
        """Read-modify-write: applies `change` (data -> new data) to the
        current data and writes it only if nobody wrote in between; on 412
        reads again and retries. Returns the session and the attempts it
        took."""
        session = self.get(session_id)
        for attempt in range(1, attempts + 1):
            if session is None:
                raise SessiondError(404, {"code": "not_found", "message": "no such session"})
            try:
                written = self.put(session_id, change(session["data"]), session["version"])
                return written, attempt
            except SessiondError as err:
                if err.status != 412:
                    raise
                session = self.get(session_id)
        raise SessiondError(412, {"code": "version_mismatch", "message": "too much contention"})

    def rotate(self, session_id, user=None):
        """A new id for the session (after a login); the old id is gone."""
        body = {"user": user} if user is not None else None
        return self._call("POST", f"/v1/sessions/{session_id}/rotate", body)

    def delete(self, session_id):
        self._call("DELETE", f"/v1/sessions/{session_id}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7700")
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    sessions = Sessions(args.url, args.token)

    def show(step, **fields):
        print(json.dumps({"step": step, **fields}), flush=True)

    created = sessions.create({"cart": []}, ttl_secs=1800)
    show("create", id=created["id"], version=created["version"])

    read = sessions.get(created["id"])
    show("read", version=read["version"], data=read["data"])

    # Another tab adds a pear while this one is adding an apple: the first
    # attempt's If-Match is stale, answered 412, and the retry keeps both.
    def add_apple(data):
        if "pear" not in data["cart"]:
            sessions.put(created["id"], {"cart": data["cart"] + ["pear"]})
        return {"cart": data["cart"] + ["apple"]}

    updated, attempts = sessions.update(created["id"], add_apple)
    show("update", version=updated["version"], data=updated["data"], attempts=attempts)

    rotated = sessions.rotate(created["id"], user="alice@example.com")
    show(
        "rotate",
        id=rotated["id"],
        user=rotated["user"],
        old_id_found=sessions.get(created["id"]) is not None,
    )
    sessions.delete(rotated["id"])
    show("delete", found=sessions.get(rotated["id"]) is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
