"""A whole session through the partner API, as an EHR backend runs one (partner_client).

    PARTNER_TOKEN=rgp_... python examples/partner_session.py \\
        --gateway http://127.0.0.1:8080 --room room-demo --record-seconds 20

PUTs a clinician and a client by the EHR's own ids, starts a session in the room (with an
Idempotency-Key, so a retry cannot start a second one), waits until the room's device
confirms it is recording, lets it record, stops it, follows the session until Blueprint's
progress note is in, and prints the note's section titles and the timeline. Exit 0 when
the note is ready, 1 when the session failed (its reason is printed). The tests run it
against the demo's stack (tests/partner_client/test_example.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

from partner_client import PartnerClient, ProblemError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway's base URL")
    parser.add_argument("--room", required=True, help="a provisioned room")
    parser.add_argument("--record-seconds", type=float, default=20.0)
    parser.add_argument("--clinician", default="example-clinician")
    parser.add_argument("--client", default="example-client")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, per wait")
    args = parser.parse_args(argv)
    token = os.environ.get("PARTNER_TOKEN")
    if not token:
        parser.error("set PARTNER_TOKEN (room-gateway partner-token create)")

    with PartnerClient(args.gateway, token) as api:
        try:
            return run(api, args)
        except ProblemError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        except TimeoutError as exc:
            print(f"timed out: {exc}", file=sys.stderr)
            return 1


def run(api: PartnerClient, args: argparse.Namespace) -> int:
    clinician = api.put_clinician(args.clinician, first_name="Ada", last_name="Example")
    client = api.put_client(
        args.client, first_name="Sam", last_name="Sample", clinician_external_id=args.clinician
    )
    print(f"clinician {clinician.external_id}: {clinician.state} ({clinician.blueprint_id})")
    print(f"client {client.external_id}: {client.state} ({client.blueprint_id})")

    session = api.start_session(
        args.room,
        args.clinician,
        args.client,
        note_type="soap",
        idempotency_key=str(uuid.uuid4()),
    )
    print(f"session {session.session_id}: {session.state} in {session.room}", flush=True)
    _wait_for_step(api, session.session_id, "start_confirmed", args.timeout)
    print("recording: the room's device confirmed", flush=True)
    time.sleep(args.record_seconds)

    stopped = api.stop_session(session.session_id)
    print(f"stopped: {stopped.state}", flush=True)
    done = api.wait_for_session(session.session_id, {"notes_ready"}, timeout_s=args.timeout)
    if done.state != "notes_ready":
        print(f"session {done.state}: {done.error}", file=sys.stderr)
        return 1
    notes = api.artifacts(session.session_id)
    assert notes.progress_note is not None
    sections = notes.progress_note.body.get("note", [])
    print(f"progress note: {len(sections)} sections")
    for section in sections:
        print(f"  - {section.get('title')}")
    for entry in done.timeline:
        print(f"{entry.at.isoformat(timespec='milliseconds')}  {entry.step}  {entry.detail or ''}")
    return 0


def _wait_for_step(api: PartnerClient, session_id: str, step: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while step not in api.get_session(session_id).steps():
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id}: no {step} yet")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
