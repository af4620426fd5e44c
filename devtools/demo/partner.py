"""The partner application's side of the demo: the calls an EHR backend makes on the
gateway's REST API (bearer token from ``room-gateway partner-token create``).

The clinician's and client's names are sent here, and only here: the demo then checks that
they never appear on MQTT or in a log. They are obviously fictional.
"""

from __future__ import annotations

from typing import Any

import httpx

CLINICIAN_ID = "demo-clinician-1"
CLIENT_ID = "demo-client-1"
CLINICIAN = {
    "first_name": "Dorothea",
    "last_name": "Demoworth",
    "email": "dorothea.demoworth@clinic.example",
}
CLIENT = {"first_name": "Casimir", "last_name": "Fictionalson"}
NAMES = (*CLINICIAN.values(), *CLIENT.values())


class PartnerError(Exception):
    """The gateway answered a partner call with an error; the message has its detail."""


class Partner:
    def __init__(self, gateway_url: str, token: str) -> None:
        self._http = httpx.Client(
            base_url=gateway_url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self._http.close()

    def room(self, room: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/rooms/{room}")

    def ensure_people(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """PUT the clinician, then the client (of that clinician); each answer is 200 once
        Blueprint has the record, 202 while it is pending."""
        clinician = self._call("PUT", f"/v1/clinicians/{CLINICIAN_ID}", json=CLINICIAN)
        body = {**CLIENT, "clinician_external_id": CLINICIAN_ID}
        client = self._call("PUT", f"/v1/clients/{CLIENT_ID}", json=body)
        return clinician, client

    def clinician(self) -> dict[str, Any]:
        return self._call("GET", f"/v1/clinicians/{CLINICIAN_ID}")

    def client(self) -> dict[str, Any]:
        return self._call("GET", f"/v1/clients/{CLIENT_ID}")

    def start_session(self, room: str) -> dict[str, Any]:
        body = {
            "room": room,
            "clinician_external_id": CLINICIAN_ID,
            "client_external_id": CLIENT_ID,
        }
        return self._call("POST", "/v1/sessions", json=body)

    def stop_session(self, session_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/sessions/{session_id}/stop")

    def session(self, session_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/sessions/{session_id}")

    def artifacts(self, session_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/sessions/{session_id}/artifacts")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise PartnerError(f"{method} {path}: {type(exc).__name__}") from None
        if answer.status_code >= 400:
            raise PartnerError(f"{method} {path}: {answer.status_code} {_problem(answer)}")
        return answer.json()


def _problem(answer: httpx.Response) -> str:
    """The problem's code and detail (RFC 9457); the gateway never echoes input in them."""
    try:
        problem = answer.json()
    except ValueError:
        return answer.reason_phrase
    if not isinstance(problem, dict):
        return answer.reason_phrase
    return f"{problem.get('code')}: {str(problem.get('detail'))[:300]}"
