"""Schemathesis hooks for upsertd's CI run (.ci/schemathesis).

Each exemption is one rule the OpenAPI document states in words because JSON Schema cannot,
narrowed to its operation, its status and the field (or problem code) the server names. A
refusal for any other reason still fails the run.
"""

import atexit
import collections
import re
import sys
import uuid

import schemathesis

# (method, path template, status, problem field or code, words of its message or "")
EXEMPT = {
    # 2-32 participants *once repeats are removed*.
    ("POST", "/api/chats", 422, "participants", "distinct"),
    # A cursor is only one this server issued.
    ("GET", "/api/conversations", 422, "cursor", "issued"),
    ("GET", "/api/conversations/{session_id}/messages", 422, "cursor", "issued"),
    ("GET", "/api/chats", 422, "cursor", "issued"),
    # The audio part must be a recording (its first bytes are sniffed).
    ("POST", "/api/upload-audio", 415, "unsupported_audio", ""),
    # A write that would take a counter past what its column holds (it depends on the row, not
    # on the request: after the generator's own large counts, any count can be the one).
    ("POST", "/api/participations/{id}/impressions", 422, "count", "would take"),
    ("POST", "/api/participations/{id}/impressions", 422, "cost", "would take"),
    ("POST", "/api/participations/{id}/viewer-samples", 422, "viewer_count", "would take"),
    ("POST", "/api/participations/{id}/earnings", 422, "amount", "would take"),
    # A message's audio_id names an uploaded file, and its id is no other conversation's.
    ("POST", "/api/conversations/{session_id}/messages", 422, "messages[].audio_id", "unknown reference"),
    ("POST", "/api/conversations/{session_id}/messages", 422, "messages[].id", "already used"),
}

# How often each exemption was used, printed at the end of the run.
USED = collections.Counter()
atexit.register(lambda: sys.stderr.write(f"exempted refusals: {dict(USED) or 'none'}\n"))

VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@schemathesis.hook
def before_call(context, case, kwargs):
    """A fresh Idempotency-Key for every request that carries a valid one: generated values
    repeat across bodies, and a key reused with another body is rightly 422 (API.md §2; the API
    tests cover it). Invalid keys are left as generated, so their 400 is still checked."""
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.match(key):
        headers["Idempotency-Key"] = str(uuid.uuid4())


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but a refusal for exactly one of the rules in EXEMPT."""
    if case is None or response is None:
        return True
    try:
        problem = response.json()
    except Exception:
        return True
    refusals = [(problem.get("code"), problem.get("detail") or "")]
    refusals += [(e.get("field"), e.get("message") or "") for e in problem.get("errors") or []]
    # `messages[3].id` is the rule of `messages[].id`.
    refusals = [(re.sub(r"\[\d+\]", "[]", name or ""), message) for name, message in refusals]
    operation = (case.method.upper(), case.operation.path, response.status_code)
    for name, message in refusals:
        for rule in EXEMPT:
            if rule[:4] == (*operation, name) and rule[4] in message:
                USED[f"{rule[0]} {rule[1]} {rule[2]} {rule[3]}"] += 1
                return False
    return True
