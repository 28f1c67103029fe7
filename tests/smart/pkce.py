"""SMART App Launch without a browser: a hand-written authorization code exchange with PKCE
(RFC 7636) against `ehrchain dev`, with `requests` only, as a native app would do it.

The patient of node-0 logs in to the demo app with their own key (the signature the login
page makes in wasm is made here with PyJWT), approves a subset of what the app asked for, and
the app exchanges the code, checks the ID token against the node's JWKS, reads
`Patient/$everything`, is refused beyond its scopes, refreshes (the refresh token rotates),
lists its sessions and ends another of them, sees the app named on its trail (AuditEvent),
and is refused after revoking. The OAuth errors the specs name are checked on the way: an unregistered redirect
URI, a missing and a wrong verifier, a reused code, an expired code. A clinician then does a
provider launch (then another picking a patient for `patient/` scopes, which reach that
patient alone), and the other institution's clinician sees their app session end at once
when they rotate their key (`ehrchain identity rotate`) and when their institution removes
them (`ehrchain identity remove`).

Usage: pkce.py DEV_DIR (the directory `ehrchain dev` filled); EHRCHAIN_BIN names the CLI.
"""
import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

APP = "ehrchain-demo"
REDIRECT = "http://127.0.0.1:8765/"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seed_of(identity):
    raw = identity["private_key"]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))


def pkce():
    verifier = b64url(secrets.token_bytes(32))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


class Launch:
    def __init__(self, conf, fhir):
        self.conf, self.fhir = conf, fhir
        self.browser = conf["authorization_endpoint"].rsplit("/auth/", 1)[0]

    def authorize(self, scope, challenge, redirect=REDIRECT, **extra):
        params = {
            "response_type": "code", "client_id": APP, "redirect_uri": redirect,
            "scope": scope, "state": secrets.token_hex(8), "aud": self.fhir,
            "code_challenge": challenge, "code_challenge_method": "S256",
        }
        params.update(extra)
        response = requests.get(self.conf["authorization_endpoint"], params=params,
                                allow_redirects=False, timeout=30)
        return response, params["state"]

    def page_config(self, response):
        assert response.status_code == 200, (response.status_code, response.text[:500])
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        match = re.search(r'<script type="application/json" id="request">(.*?)</script>',
                          response.text, re.S)
        return json.loads(match.group(1))

    def log_in(self, identity, scope, approve=None, patient=None):
        """The page's work: who am I, then sign the approval with my key."""
        verifier, challenge = pkce()
        response, state = self.authorize(scope, challenge)
        config = self.page_config(response)
        assert config["app"] == {"client_id": APP, "name": "ehrchain demo app"}, config
        assert [s["scope"] for s in config["scopes"]] == scope.split()
        assert all(s["words"] for s in config["scopes"])
        key = Ed25519PrivateKey.from_private_bytes(seed_of(identity))
        now = int(time.time())
        proof = jwt.encode({
            "iss": identity["id"], "sub": identity["id"], "aud": config["token_url"],
            "exp": now + 120, "iat": now, "jti": config["challenge"] + ".who",
            "client_id": APP, "scope": "",
        }, key, algorithm="EdDSA")
        who = requests.post(self.browser + "/auth/authorize/who",
                            json={"request": config["request"], "proof": proof}, timeout=30)
        assert who.status_code == 200, who.text
        approved = approve if approve is not None else scope
        signed = jwt.encode({
            "iss": identity["id"], "sub": identity["id"], "aud": config["token_url"],
            "exp": now + 120, "iat": now, "jti": config["challenge"],
            "client_id": APP, "scope": approved,
        }, key, algorithm="EdDSA")
        body = {"request": config["request"], "scope": approved, "assertion": signed}
        if patient is not None:
            body["patient"] = patient
        answer = requests.post(self.browser + "/auth/authorize/approve", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        redirect = urllib.parse.urlparse(answer.json()["redirect"])
        assert redirect.scheme + "://" + redirect.netloc + redirect.path == REDIRECT
        query = urllib.parse.parse_qs(redirect.query)
        assert query["state"] == [state], query
        if "error" in query:
            return who.json(), None, query["error"][0]
        return who.json(), query["code"][0], verifier

    def exchange(self, code, verifier, redirect=REDIRECT):
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                "client_id": APP}
        if verifier is not None:
            form["code_verifier"] = verifier
        return requests.post(self.conf["token_endpoint"], data=form, headers=FORM, timeout=30)


def cli(*args):
    done = subprocess.run([os.environ["EHRCHAIN_BIN"], *args], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def identity_of_key_file(path):
    seed = bytes.fromhex(open(path).read().strip())
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return {"id": public.hex(), "private_key": b64url(seed)}


def sessions_status(launch, access_token):
    return requests.get(launch.browser + "/auth/sessions",
                        headers={"Authorization": "Bearer " + access_token}, timeout=30).status_code


def expect_oauth(response, status, error):
    assert response.status_code == status, (status, response.status_code, response.text)
    assert response.json()["error"] == error, response.text


def main(home):
    identities = json.load(open(os.path.join(home, "identities.json")))
    demo = json.load(open(os.path.join(home, "passkey-enrolment.json")))
    patient = next(i for i in identities if i["role"] == "patient" and i["id"] == demo["identity"])
    clinician = next(i for i in identities if i["role"] == "clinician" and i["api"] == patient["api"])
    fhir = demo["fhir"]
    conf = requests.get(fhir + "/.well-known/smart-configuration", timeout=30).json()
    for field in ["authorization_endpoint", "token_endpoint", "revocation_endpoint",
                  "introspection_endpoint", "jwks_uri"]:
        assert conf[field].startswith("https://"), (field, conf)
    assert conf["code_challenge_methods_supported"] == ["S256"]
    for capability in ["launch-standalone", "client-public", "client-confidential-asymmetric",
                       "context-standalone-patient", "permission-v2", "permission-offline"]:
        assert capability in conf["capabilities"], capability
    launch = Launch(conf, fhir)

    # Apps are registered, not trusted: an unknown redirect URI or client is told on the
    # node's page, never redirected to.
    _, challenge = pkce()
    page, _ = launch.authorize("patient/*.rs", challenge, redirect="http://127.0.0.1:8765/evil")
    assert page.status_code == 400 and "Location" not in page.headers, page.status_code
    assert "invalid_request" in page.text
    page, _ = launch.authorize("patient/*.rs", challenge, client_id="nobody")
    assert page.status_code == 400 and "unauthorized_client" in page.text
    # PKCE is required: without a challenge the app hears invalid_request at its redirect.
    page, state = launch.authorize("patient/*.rs", challenge, code_challenge="")
    assert page.status_code in (302, 303), page.status_code
    back = urllib.parse.parse_qs(urllib.parse.urlparse(page.headers["Location"]).query)
    assert back["error"] == ["invalid_request"] and back["state"] == [state], back

    # A code that waits longer than its minute is refused: taken now, exchanged at the end.
    _, stale_code, stale_verifier = launch.log_in(patient, "patient/Patient.rs launch/patient")
    stale_at = time.time()

    # The patient launch, approving all but patient/Observation.c.
    scope = "launch/patient openid fhirUser offline_access patient/*.rs patient/Observation.c"
    approved = "launch/patient openid fhirUser offline_access patient/*.rs"
    who, code, verifier = launch.log_in(patient, scope, approve=approved)
    assert who["role"] == "patient" and who["patient"] == patient["patient"], who
    expect_oauth(launch.exchange(code, None), 400, "invalid_request")
    expect_oauth(launch.exchange(code, pkce()[0]), 400, "invalid_grant")
    expect_oauth(launch.exchange(code, verifier, redirect="http://localhost:8765/"), 400,
                 "invalid_grant")
    token = launch.exchange(code, verifier)
    assert token.status_code == 200, token.text
    assert token.headers["Cache-Control"] == "no-store"
    token = token.json()
    assert token["token_type"] == "Bearer" and token["scope"] == approved, token
    assert token["patient"] == patient["patient"], token
    assert token["fhirUser"].endswith("/Patient/" + patient["patient"]), token
    # A code is used once; a second use also revokes what the first gave.
    expect_oauth(launch.exchange(code, verifier), 400, "invalid_grant")
    gone = requests.get(f"{fhir}/Patient/{patient['patient']}",
                        headers={"Authorization": "Bearer " + token["access_token"]}, timeout=30)
    assert gone.status_code == 401, gone.text

    # Again, properly this time; the ID token is signed by the node's key (its JWKS).
    who, code, verifier = launch.log_in(patient, scope, approve=approved)
    token = launch.exchange(code, verifier).json()
    jwks = requests.get(conf["jwks_uri"], timeout=30).json()
    key = jwt.PyJWK(jwks["keys"][0])
    id_token = jwt.decode(token["id_token"], key.key, algorithms=["EdDSA"], audience=APP)
    assert id_token["sub"] == patient["id"] and id_token["fhirUser"] == token["fhirUser"], id_token
    bearer = {"Authorization": "Bearer " + token["access_token"], "Accept": "application/fhir+json"}
    everything = requests.get(f"{fhir}/Patient/{patient['patient']}/$everything",
                              headers=bearer, timeout=60)
    assert everything.status_code == 200, everything.text
    bundle = everything.json()
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) > 1, len(bundle.get("entry", []))
    # The patient's trail names the app their reads went through (once the node has logged them).
    deadline = time.time() + 60
    while True:
        trail = requests.get(f"{fhir}/AuditEvent", params={"patient": patient["patient"], "_count": "50"},
                             headers=bearer, timeout=30)
        assert trail.status_code == 200, trail.text
        apps = [agent["who"] for entry in trail.json().get("entry", [])
                for agent in entry["resource"].get("agent", [])
                if agent["type"]["coding"][0]["code"] == "110150"]
        if apps or time.time() > deadline:
            break
        time.sleep(1)
    assert apps and apps[0]["display"] == "ehrchain demo app", apps
    assert apps[0]["identifier"]["value"] == APP, apps
    # Beyond its scopes: no create was approved.
    create = requests.post(f"{fhir}/Observation", headers={**bearer, "Content-Type": "application/fhir+json"},
                           json={"resourceType": "Observation", "status": "final",
                                 "code": {"text": "x"},
                                 "subject": {"reference": "Patient/" + patient["patient"]}},
                           timeout=30)
    assert create.status_code == 403, create.text
    assert "insufficient_scope" in create.headers.get("WWW-Authenticate", ""), create.headers
    # The session is on chain and names the app; the patient sees it.
    sessions = requests.get(launch.browser + "/auth/sessions", headers=bearer, timeout=30).json()
    mine = [s for s in sessions["sessions"] if s["current"]]
    assert mine and mine[0]["app"] == APP and mine[0]["active"], sessions
    assert mine[0]["app_name"] == "ehrchain demo app"
    # The patient ends another of their app sessions from this one: that one stops, this goes on.
    _, other_code, other_verifier = launch.log_in(patient, "patient/Patient.rs")
    other = launch.exchange(other_code, other_verifier).json()
    theirs = requests.get(launch.browser + "/auth/sessions",
                          headers={"Authorization": "Bearer " + other["access_token"]}, timeout=30).json()
    other_key = next(s["session"] for s in theirs["sessions"] if s["current"])
    ended = requests.post(f"{launch.browser}/auth/sessions/{other_key}/end", headers=bearer, timeout=60)
    assert ended.status_code == 200, ended.text
    assert sessions_status(launch, other["access_token"]) == 401
    assert sessions_status(launch, token["access_token"]) == 200
    # Refresh: a new access token and a new refresh token; the old one is spent.
    refreshed = requests.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": APP,
    }, timeout=30)
    assert refreshed.status_code == 200, refreshed.text
    refreshed = refreshed.json()
    assert refreshed["refresh_token"] != token["refresh_token"]
    expect_oauth(requests.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": APP,
    }, timeout=30), 400, "invalid_grant")
    bearer["Authorization"] = "Bearer " + refreshed["access_token"]
    read = requests.get(f"{fhir}/Patient/{patient['patient']}", headers=bearer, timeout=30)
    assert read.status_code == 200, read.text
    # Introspection answers the caller about its own token only.
    seen = requests.post(conf["introspection_endpoint"], headers=bearer,
                         data={"token": refreshed["access_token"]}, timeout=30).json()
    assert seen["active"] and seen["client_id"] == APP and seen["sub"] == patient["id"], seen
    # Revocation ends the session on chain: this token, its refresh token, every node.
    revoked = requests.post(conf["revocation_endpoint"], data={
        "token": refreshed["access_token"], "client_id": APP,
    }, timeout=60)
    assert revoked.status_code == 200, revoked.text
    after = requests.get(f"{fhir}/Patient/{patient['patient']}", headers=bearer, timeout=30)
    assert after.status_code == 401, after.text
    expect_oauth(requests.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"], "client_id": APP,
    }, timeout=30), 400, "invalid_grant")

    # A provider launch: the clinician logs in with their own key, user/ scopes, no patient.
    who, code, verifier = launch.log_in(clinician, "openid fhirUser user/*.rs")
    assert who["role"] == "clinician" and who["patient"] is None, who
    provider = launch.exchange(code, verifier).json()
    assert "patient" not in provider and "/Practitioner/" in provider["fhirUser"], provider
    # Nobody ends another identity's session.
    stranger = requests.post(f"{launch.browser}/auth/sessions/{mine[0]['session']}/end",
                             headers={"Authorization": "Bearer " + provider["access_token"]}, timeout=30)
    assert stranger.status_code == 404, stranger.text
    metadata = requests.get(f"{fhir}/metadata", timeout=30)
    assert metadata.status_code == 200
    search = requests.get(f"{fhir}/Observation", params={"patient": patient["patient"]},
                          headers={"Authorization": "Bearer " + provider["access_token"],
                                   "Accept": "application/fhir+json"}, timeout=60)
    assert search.status_code in (200, 403), search.text
    if search.status_code == 403:
        # Refused by the chain's consent rule, not by the token: an OperationOutcome says so.
        assert search.json()["resourceType"] == "OperationOutcome", search.text

    # A provider launch asking for a patient in context: the clinician picks one of the
    # patients offered (their institution's, or who granted them access); patient/ scopes
    # then reach that patient alone, and a patient not offered cannot be picked.
    second = next(i for i in identities if i["role"] == "patient" and i["id"] != patient["id"])
    scope = "launch/patient openid fhirUser patient/Observation.rs patient/Patient.rs"
    who, refused, error = launch.log_in(clinician, scope, patient=second["patient"])
    assert refused is None and error == "access_denied", (refused, error)
    who, code, verifier = launch.log_in(clinician, scope, patient=patient["patient"])
    offered = [p["id"] for p in who["patients"]]
    assert patient["patient"] in offered and second["patient"] not in offered, who
    picked = launch.exchange(code, verifier).json()
    assert picked["patient"] == patient["patient"], picked
    assert "/Practitioner/" in picked["fhirUser"], picked
    in_context = {"Authorization": "Bearer " + picked["access_token"], "Accept": "application/fhir+json"}
    mine = requests.get(f"{fhir}/Observation", headers=in_context, timeout=60)
    assert mine.status_code == 200 and mine.json()["entry"], mine.text[:300]
    assert all(e["resource"]["subject"]["reference"].endswith(patient["patient"])
               for e in mine.json()["entry"] if e["resource"]["resourceType"] == "Observation")
    theirs = requests.get(f"{fhir}/Observation", params={"patient": second["patient"]},
                          headers=in_context, timeout=60)
    assert theirs.status_code == 403 and "patient" in theirs.text, theirs.text

    # Rotation and removal end the identity's app sessions at once, on every node.
    other = next(i for i in identities if i["role"] == "clinician" and i["api"] != patient["api"])
    _, code, verifier = launch.log_in(other, "openid fhirUser offline_access user/*.rs")
    before = launch.exchange(code, verifier).json()
    assert sessions_status(launch, before["access_token"]) == 200
    rotated_key = os.path.join(home, "identities", "clinician-2-rotated.key")
    cli("identity", "rotate", "--api", other["api"],
        "--key", os.path.join(home, "identities", "clinician-2.key"), "--out", rotated_key)
    assert sessions_status(launch, before["access_token"]) == 401
    expect_oauth(requests.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": before["refresh_token"],
        "client_id": APP}, timeout=30), 400, "invalid_grant")
    rotated = identity_of_key_file(rotated_key)
    _, code, verifier = launch.log_in(rotated, "openid fhirUser user/*.rs")
    after_rotation = launch.exchange(code, verifier).json()
    assert sessions_status(launch, after_rotation["access_token"]) == 200
    cli("identity", "remove", "--api", other["api"],
        "--key", os.path.join(home, "node-1", "validator.key"), "--clinician", rotated["id"])
    assert sessions_status(launch, after_rotation["access_token"]) == 401

    # The code taken at the start has waited more than a minute by now.
    time.sleep(max(0, 62 - (time.time() - stale_at)))
    expect_oauth(launch.exchange(stale_code, stale_verifier), 400, "invalid_grant")
    print("SMART App Launch (PKCE, no browser): all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
