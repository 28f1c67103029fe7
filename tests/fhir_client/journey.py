"""The user's journey through ehrchain's FHIR API with independently written tools.

fhirpy (a FHIR client library) does every FHIR call; PyJWT with `cryptography` signs the
SMART Backend Services client assertions (EdDSA, and RS384 and ES384 with client keys
registered on chain); fhirclient's R4 (4.0.1) models, generated
from the specification, validate every resource that comes back (strict: unknown or
ill-typed elements fail). Nothing here knows ehrchain beyond the token endpoint and
identities.json.

The journey: a clinician at institution A registers a patient and writes records; searches
them; the patient grants clinician B (another institution) read access; B reads; the patient
revokes; B is refused (403, recorded on chain); the patient and the auditor read the
AuditEvents. Also: 401 without a token, a replayed assertion refused, malformed JSON 400,
an invalid resource 422, an oversized body 413, all as OperationOutcome.

Usage: python journey.py IDENTITIES_JSON
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhirclient.models import fhirelementfactory
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError
from fhirpy.base.exceptions import OperationOutcome as FhirpyOutcome

FHIR_JSON = "application/fhir+json"


def validate(resource):
    """Check a resource (and, for a Bundle, each entry) against the R4 models."""
    kind = resource["resourceType"]
    fhirelementfactory.FHIRElementFactory.instantiate(kind, resource)  # strict by default
    # Instantiation above raises FHIRValidationError on unknown or ill-typed elements.
    for entry in resource.get("entry", []) if kind == "Bundle" else []:
        if "resource" in entry:
            validate(entry["resource"])
    return resource


def seed_of(identity):
    raw = identity["private_key"]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))


def assertion(identity, jti=None):
    key = Ed25519PrivateKey.from_private_bytes(seed_of(identity))
    now = int(time.time())
    claims = {
        "iss": identity["id"],
        "sub": identity["id"],
        "aud": identity["api"] + "/auth/token",
        "exp": now + 240,
        "jti": jti or str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="EdDSA")


def smart_token_url(api):
    config = requests.get(api + "/.well-known/smart-configuration", timeout=30).json()
    return config["token_endpoint"]


def login(identity, signed=None, scope=None):
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed or assertion(identity),
    }
    if scope is not None:
        form["scope"] = scope
    return requests.post(smart_token_url(identity["api"]), data=form, timeout=60)


def client(identity):
    response = login(identity)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert response.json()["token_type"].lower() == "bearer"
    return SyncFHIRClient(
        identity["api"] + "/fhir",
        authorization="Bearer " + token,
        extra_headers={"Accept": FHIR_JSON},
    ), token


def expect_outcome(response, status):
    assert response.status_code == status, (status, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith(FHIR_JSON), response.headers
    body = validate(response.json())
    assert body["resourceType"] == "OperationOutcome", body
    return body


STORED_TYPES = {
    "Patient", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest", "Immunization",
    "Procedure", "Encounter", "DiagnosticReport", "DocumentReference", "Binary",
}


def examples_dir():
    return os.environ.get("EHRCHAIN_R4_EXAMPLES") or os.path.expanduser(
        "~/.cache/ehrchain/npm/node_modules/hl7.fhir.r4.examples"
    )


def tokens(text):
    """The JSON as ordered pairs with every number's text kept: equal means same key order, same
    strings, same digits."""
    return json.loads(text, object_pairs_hook=list, parse_float=str, parse_int=str)


def round_trip_examples(api, headers, patient_id):
    """Every official R4 example of the stored types, with its Patient references pointed at
    our patient, is created and read back: outside id and meta, the answer is what was sent,
    token for token, and it passes fhirclient's R4 models. An example naming no Patient/{id}
    (a Group, a contained #newborn, a display alone) is refused with 422: every record here
    belongs to one patient."""
    import re
    from concurrent.futures import ThreadPoolExecutor

    directory = examples_dir()
    names = sorted(
        n for n in os.listdir(directory) if n.endswith(".json") and n.split("-", 1)[0] in STORED_TYPES
    )
    assert len(names) == 184, len(names)

    local = __import__("threading").local()

    def session():
        # One keep-alive connection per worker, as a FHIR app would hold.
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    def one(name):
        text = open(os.path.join(directory, name), encoding="utf-8").read()
        sent = re.sub(r'"Patient/[A-Za-z0-9.-]{1,64}"', '"Patient/' + patient_id + '"', text)
        kind = name.split("-", 1)[0]
        created = session().post(f"{api}/fhir/{kind}", data=sent.encode(), headers=headers, timeout=120)
        if created.status_code == 422:
            assert "Patient/{id}" in created.text, (name, created.text)
            return "refused"
        assert created.status_code == 201, (name, created.status_code, created.text)
        location = created.headers["Location"].split("/_history")[0]
        served = session().get(location, headers=headers, timeout=60)
        assert served.status_code == 200, (name, served.text)
        strip = lambda pairs: [(k, v) for k, v in pairs if k not in ("id", "meta")]
        assert strip(tokens(served.text)) == strip(tokens(sent)), name
        validate(served.json())
        return "stored"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, names))
    assert (outcomes.count("stored"), outcomes.count("refused")) == (171, 13), outcomes


def scopes_are_enforced(identity, patient_id, observation_id):
    """A token gets the SMART v2 scopes it asked for, no more, and every route holds it to
    them: 403 for a type or an interaction its scopes do not name."""
    api = identity["api"]
    narrow = login(identity, scope="system/Observation.rs")
    assert narrow.status_code == 200, narrow.text
    assert narrow.json()["scope"] == "system/Observation.rs", narrow.json()
    auth = {"Authorization": "Bearer " + narrow.json()["access_token"], "Content-Type": FHIR_JSON}
    assert requests.get(f"{api}/fhir/Observation/{observation_id}", headers=auth, timeout=60).status_code == 200
    found = requests.get(f"{api}/fhir/Observation?patient={patient_id}", headers=auth, timeout=60)
    assert found.status_code == 200 and validate(found.json())["total"] >= 2, found.text
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "scoped"}, "subject": {"reference": "Patient/" + patient_id}}
    for method, url, data in [
        ("POST", f"{api}/fhir/Observation", json.dumps(body)),
        ("GET", f"{api}/fhir/Condition?patient={patient_id}", None),
        ("GET", f"{api}/fhir/Patient/{patient_id}", None),
        ("GET", f"{api}/fhir/Patient/{patient_id}/$everything", None),
        ("GET", f"{api}/fhir/AuditEvent?patient={patient_id}", None),
    ]:
        response = requests.request(method, url, data=data, headers=auth, timeout=60)
        refused = expect_outcome(response, 403)
        assert "insufficient_scope" in json.dumps(refused), (method, url, refused)
        assert 'error="insufficient_scope"' in response.headers.get("WWW-Authenticate", ""), response.headers
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{observation_id}"}},
        {"request": {"method": "GET", "url": f"Condition?patient={patient_id}"}},
    ]}
    answer = requests.post(f"{api}/fhir", data=json.dumps(batch), headers=auth, timeout=60)
    assert [e["response"]["status"][:3] for e in answer.json()["entry"]] == ["200", "403"], answer.text
    # The chain's own API is not typed, so it needs every scope.
    assert requests.get(f"{api}/chain/status", headers=auth, timeout=30).status_code == 403
    for bad in ["system/Spaceship.rs", "system/Observation.sr", "patient/*.rs"]:
        refused = login(identity, scope=bad)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope", (bad, refused.text)
    config = requests.get(api + "/fhir/.well-known/smart-configuration", timeout=30).json()
    assert "permission-v2" in config["capabilities"], config


# Standard R4 names this server does not serve: result parameters, common parameters and
# type parameters. Each must be refused (400, named) wherever the statement does not claim it.
UNCLAIMED = [
    "_include", "_revinclude", "_elements", "_contained",
    "_text", "_content", "_tag", "_profile", "_security", "_source", "_list", "_has:Observation:patient:code",
    "status", "clinical-status", "intent", "value-quantity", "encounter", "performer", "name", "birthdate",
]


def capability_claims_hold(api, headers, patient_id):
    """Every search parameter /fhir/metadata claims for a stored type answers 200, every
    standard name it does not claim answers 400 naming it, and the interactions it claims are
    the ones this journey exercises."""
    statement = validate(requests.get(api + "/fhir/metadata", timeout=30).json())
    values = {"token": "http://loinc.org|8867-4", "date": "ge2020-01-01", "string": "x"}
    checked = 0
    for resource in statement["rest"][0]["resource"]:
        kind = resource["type"]
        if kind not in STORED_TYPES:
            continue
        claimed = {p["name"]: p for p in resource.get("searchParam", [])}
        # A search is scoped to one patient (the statement's documentation says so): by
        # patient=, or for Patient and Binary, which have no patient parameter, by _id.
        assert "_id" in resource["documentation"], resource
        base = {"patient": patient_id} if "patient" in claimed else {"_id": patient_id if kind == "Patient" else "0" * 32}
        for name, param in claimed.items():
            query = dict(base)
            if name in ("patient", "subject"):
                query = {name: patient_id if name == "patient" else "Patient/" + patient_id}
            elif name == "_id":
                query[name] = patient_id if kind == "Patient" else "0" * 32
            else:
                query[name] = values[param["type"]]
            answer = requests.get(f"{api}/fhir/{kind}", params=query, headers=headers, timeout=60)
            assert answer.status_code == 200, (kind, name, answer.status_code, answer.text)
            assert validate(answer.json())["type"] == "searchset"
            assert param["definition"].startswith("http://hl7.org/fhir/SearchParameter/"), param
            checked += 1
        for name in UNCLAIMED:
            if name in claimed:
                continue
            answer = requests.get(f"{api}/fhir/{kind}", params={**base, name: "x"}, headers=headers, timeout=60)
            body = expect_outcome(answer, 400)
            assert name.split(":")[0] in json.dumps(body), (kind, name, body)
        interactions = {i["code"] for i in resource["interaction"]}
        assert interactions == {"read", "vread", "update", "patch", "delete", "history-instance", "create", "search-type"}, interactions
    assert checked >= 40, checked


def client_keys_log_in(exe, api, key_file, identity, observation_id):
    """SMART Backend Services with RS384 and ES384, the two algorithms the spec requires: a
    backend service generates its own RSA and P-384 keys (`cryptography`), registers each
    public JWK on chain for its identity (`ehrchain identity add-client-key`), and logs in
    with assertions PyJWT signs under the key's `kid`; before registration and after
    withdrawal the same assertion is refused, and a JWK with its private part is never sent."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    config = requests.get(api + "/fhir/.well-known/smart-configuration", timeout=30).json()
    assert {"EdDSA", "RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"]), config
    folder = tempfile.mkdtemp()
    keys = {
        "RS384": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
        "ES384": (ec.generate_private_key(ec.SECP384R1()), ECAlgorithm),
    }

    def signed(alg):
        now = int(time.time())
        claims = {"iss": identity["id"], "sub": identity["id"], "aud": smart_token_url(api),
                  "exp": now + 240, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, keys[alg][0], algorithm=alg, headers={"kid": "journey-" + alg.lower()})

    for alg, (private, algorithm) in keys.items():
        kid = "journey-" + alg.lower()
        before = login(identity, signed(alg))
        assert before.status_code == 401 and before.json()["error"] == "invalid_client", before.text
        # The whole key pair as a JWK: refused by the CLI, nothing reaches the chain.
        whole = json.loads(algorithm.to_jwk(private))
        whole.update(kid=kid)
        whole_path = os.path.join(folder, alg + ".private.json")
        json.dump(whole, open(whole_path, "w"))
        refused = subprocess.run([exe, "identity", "add-client-key", "--api", api, "--key", key_file, "--jwk", whole_path],
                                 capture_output=True, text=True)
        assert refused.returncode != 0 and "private" in refused.stderr, refused
        public = json.loads(algorithm.to_jwk(private.public_key()))
        public.update(kid=kid, alg=alg, use="sig")
        public_path = os.path.join(folder, alg + ".public.json")
        json.dump(public, open(public_path, "w"))
        subprocess.run([exe, "identity", "add-client-key", "--api", api, "--key", key_file, "--jwk", public_path],
                       capture_output=True, text=True, check=True)
        response = login(identity, signed(alg))
        assert response.status_code == 200, response.text
        bearer = {"Authorization": "Bearer " + response.json()["access_token"], "Accept": FHIR_JSON}
        read = requests.get(f"{api}/fhir/Observation/{observation_id}", headers=bearer, timeout=60)
        assert read.status_code == 200, read.text
        validate(read.json())
    shown = subprocess.run([exe, "identity", "show", "--api", api, "--key-file", key_file],
                           capture_output=True, text=True, check=True)
    listed = json.loads(shown.stdout)["client_keys"]
    assert {"kid": "journey-rs384", "alg": "RS384"} in listed and {"kid": "journey-es384", "alg": "ES384"} in listed, listed
    subprocess.run([exe, "identity", "remove-client-key", "--api", api, "--key", key_file, "--kid", "journey-rs384"],
                   capture_output=True, text=True, check=True)
    after = login(identity, signed("RS384"))
    assert after.status_code == 401 and after.json()["error"] == "invalid_client", after.text
    assert login(identity, signed("ES384")).status_code == 200


def main(path):
    identities = json.load(open(path))
    by_role = {}
    for identity in identities:
        by_role.setdefault(identity["role"], []).append(identity)
    clinician_a, clinician_b = by_role["clinician"][:2]
    assert clinician_a["institution"] != clinician_b["institution"]
    auditor = by_role["auditor"][0]
    api_a = clinician_a["api"]

    # Discovery, without a token.
    statement = validate(requests.get(api_a + "/fhir/metadata", timeout=30).json())
    assert statement["fhirVersion"] == "4.0.1"
    supported = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Consent", "AuditEvent"} <= supported

    # No token: 401. A replayed assertion: refused.
    expect_outcome(requests.get(api_a + "/fhir/Observation?patient=x", timeout=30), 401)
    once = assertion(clinician_a)
    assert login(clinician_a, once).status_code == 200
    replay = login(clinician_a, once)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client", replay.text
    forged = assertion(dict(clinician_a, private_key=clinician_b["private_key"]))
    assert login(clinician_a, forged).status_code == 401

    fhir_a, token_a = client(clinician_a)

    # A registers a new patient (the server assigns the id) and writes records.
    patient = fhir_a.resource(
        "Patient",
        name=[{"family": "Journeyperson", "given": ["Planted"]}],
        gender="female",
        birthDate="1984-03-09",
    )
    patient.save()
    patient_id = patient.id
    assert patient_id and patient["meta"]["versionId"] == "1"
    validate(patient.serialize())
    observations = []
    for value, code, display in [(72, "8867-4", "Heart rate"), (37.1, "8310-5", "Body temperature")]:
        observation = fhir_a.resource(
            "Observation",
            status="final",
            category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            code={"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            subject={"reference": "Patient/" + patient_id},
            effectiveDateTime="2026-11-20T10:00:00Z",
            valueQuantity={"value": value, "unit": "1/min" if code == "8867-4" else "Cel"},
        )
        observation.save()
        validate(observation.serialize())
        observations.append(observation)
    condition = fhir_a.resource(
        "Condition",
        clinicalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        code={"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]},
        subject={"reference": "Patient/" + patient_id},
        recordedDate="2026-11-20",
    )
    condition.save()

    # An update makes version 2; the history has both.
    observations[0]["valueQuantity"]["value"] = 74
    observations[0].save()
    assert observations[0]["meta"]["versionId"] == "2"
    history = requests.get(
        f"{api_a}/fhir/Observation/{observations[0].id}/_history",
        headers={"Authorization": "Bearer " + token_a},
        timeout=60,
    )
    assert history.status_code == 200
    assert validate(history.json())["total"] == 2
    old = requests.get(
        f"{api_a}/fhir/Observation/{observations[0].id}/_history/1",
        headers={"Authorization": "Bearer " + token_a},
        timeout=60,
    )
    assert old.status_code == 200 and old.headers["ETag"] == 'W/"1"'
    assert validate(old.json())["valueQuantity"]["value"] == 72

    auth_a = {"Authorization": "Bearer " + token_a}
    # Provenance: block, transaction and an inclusion proof the CLI checks offline.
    provenance = None
    for _ in range(40):
        response = requests.get(f"{api_a}/fhir/Provenance?target=Observation/{observations[0].id}", headers=auth_a, timeout=60)
        if response.status_code == 200:
            provenance = validate(response.json())
            break
        assert response.status_code == 503, response.text
        time.sleep(0.5)
    assert provenance and provenance["total"] == 2, provenance
    newest = provenance["entry"][0]["resource"]
    assert newest["target"][0]["reference"].endswith("/_history/2")
    exe = os.environ.get("EHRCHAIN_EXE")
    home = os.path.dirname(os.path.abspath(sys.argv[1]))
    if exe:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(newest, f)
        checked = subprocess.run([exe, "proof", "verify", "--proof", f.name, "--genesis", os.path.join(home, "genesis.json")], capture_output=True, text=True)
        assert checked.returncode == 0 and checked.stdout.startswith("valid"), checked
        # CLI parity: the CLI logs in the same way and its token works here.
        cli_token = subprocess.run([exe, "auth", "token", "--api", api_a, "--key", os.path.join(home, "identities", "clinician-1.key")], capture_output=True, text=True, check=True).stdout.strip()
        again = requests.get(f"{api_a}/fhir/Condition/{condition.id}", headers={"Authorization": "Bearer " + cli_token}, timeout=60)
        assert again.status_code == 200, again.text
        # ... and `ehrchain fhir` does what a FHIR client does: a search, then a refused read.
        searched = subprocess.run(
            [exe, "fhir", "get", "--api", api_a, "--key", os.path.join(home, "identities", "clinician-1.key"),
             f"Condition?patient={patient_id}"],
            capture_output=True, text=True, check=True)
        bundle = validate(json.loads(searched.stdout))
        assert bundle["type"] == "searchset" and bundle["total"] >= 1, bundle
        refused_cli = subprocess.run(
            [exe, "fhir", "get", "--api", api_a, "--key", os.path.join(home, "auditor.key"),
             f"Condition/{condition.id}"],
            capture_output=True, text=True)
        assert refused_cli.returncode == 1 and "OperationOutcome" in refused_cli.stderr, refused_cli

    # $everything: the Patient first, then the records.
    everything = requests.get(f"{api_a}/fhir/Patient/{patient_id}/$everything", headers=auth_a, timeout=60)
    assert everything.status_code == 200, everything.text
    everything = validate(everything.json())
    assert everything["total"] == 4, everything["total"]
    assert everything["entry"][0]["resource"]["resourceType"] == "Patient"

    # A transaction Bundle: a new patient and two records that reference it by urn:uuid.
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Patient", "name": [{"family": "Bundleperson"}], "birthDate": "1990-01-01"},
             "request": {"method": "POST", "url": "Patient"}},
        ] + [
            {"fullUrl": "urn:uuid:" + str(uuid.uuid4()),
             "resource": {"resourceType": "Observation", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                          "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                          "effectiveDateTime": f"2026-11-2{i}", "valueQuantity": {"value": 60 + i}},
             "request": {"method": "POST", "url": "Observation"}}
            for i in range(2)
        ],
    }
    answer = requests.post(api_a + "/fhir", json=transaction, headers={**auth_a, "Content-Type": FHIR_JSON}, timeout=120)
    assert answer.status_code == 200, answer.text
    answer = validate(answer.json())
    assert answer["type"] == "transaction-response" and len(answer["entry"]) == 3
    assert all(e["response"]["status"] == "201 Created" for e in answer["entry"])
    bundled_patient = answer["entry"][0]["response"]["location"].split("/")[1]
    bundled = fhir_a.resources("Observation").search(patient=bundled_patient).fetch_all()
    assert len(bundled) == 2 and all(o["subject"]["reference"] == "Patient/" + bundled_patient for o in bundled)
    # A patient with more records of a type than one search used to open (200): a content
    # search filters them all through the node's index, and paging follows `next` to the end.
    created = requests.post(api_a + "/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Manyrecords"}], "birthDate": "1970-01-01"},
                            headers={**auth_a, "Content-Type": FHIR_JSON}, timeout=60)
    assert created.status_code == 201, created.text
    many_patient = created.json()["id"]
    many = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0" if i % 26 == 0 else "8867-4"}]},
                          "subject": {"reference": "Patient/" + many_patient},
                          "effectiveDateTime": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}", "valueQuantity": {"value": 60 + i % 40}},
             "request": {"method": "POST", "url": "Observation"}}
            for i in range(260)
        ],
    }
    answer = requests.post(api_a + "/fhir", json=many, headers={**auth_a, "Content-Type": FHIR_JSON}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert all(e["response"]["status"] == "201 Created" for e in answer.json()["entry"]), answer.text[:500]
    glucose = fhir_a.resources("Observation").search(patient=many_patient, code="http://loinc.org|2339-0").fetch_all()
    assert len(glucose) == 10, len(glucose)
    heart_rates = fhir_a.resources("Observation").search(patient=many_patient, code="8867-4").limit(50).fetch_all()
    assert len(heart_rates) == 250 and len({r.id for r in heart_rates}) == 250, len(heart_rates)
    first = requests.get(f"{api_a}/fhir/Observation?patient={many_patient}&code=8867-4&_count=50", headers=auth_a, timeout=60).json()
    assert first["total"] == 250 and any(link["relation"] == "next" for link in first["link"]), first["link"]
    # Sorted by the clinical date (from the index), newest first, within a date range; and a
    # count alone, for which nothing is read.
    expected = sum(1 for i in range(260) if i % 26 != 0 and 1 + i % 12 >= 6)
    newest = requests.get(f"{api_a}/fhir/Observation?patient={many_patient}&code=8867-4&date=ge2025-06&_sort=-date&_count=50", headers=auth_a, timeout=60)
    assert newest.status_code == 200, newest.text
    newest = validate(newest.json())
    dates = [e["resource"]["effectiveDateTime"] for e in newest["entry"]]
    assert newest["total"] == expected and len(dates) == 50, (newest["total"], expected, len(dates))
    assert dates == sorted(dates, reverse=True) and all(d >= "2025-06" for d in dates), dates
    oldest = validate(requests.get(f"{api_a}/fhir/Observation?patient={many_patient}&_sort=date,_id&_count=5", headers=auth_a, timeout=60).json())
    earliest = [e["resource"]["effectiveDateTime"] for e in oldest["entry"]]
    assert earliest == sorted(earliest) and earliest[:4] == ["2025-01-01"] * 4 and earliest[4] > "2025-01-01", earliest
    counted = validate(requests.get(f"{api_a}/fhir/Observation?patient={many_patient}&code=2339-0&_summary=count", headers=auth_a, timeout=60).json())
    assert counted["total"] == 10 and not counted.get("entry"), counted
    expect_outcome(requests.get(f"{api_a}/fhir/Observation?patient={many_patient}&_sort=value", headers=auth_a, timeout=60), 400)

    # An invalid entry fails the whole transaction, and nothing of it is stored.
    transaction["entry"][2]["resource"].pop("status")
    refused = expect_outcome(requests.post(api_a + "/fhir", json=transaction, headers={**auth_a, "Content-Type": FHIR_JSON}, timeout=60), 422)
    assert "entry 2" in json.dumps(refused)

    # Search as A: by patient, by code, with paging.
    found = fhir_a.resources("Observation").search(patient=patient_id).fetch_all()
    assert len(found) == 2, found
    for resource in found:
        validate(resource.serialize())
    heart = fhir_a.resources("Observation").search(subject="Patient/" + patient_id, code="http://loinc.org|8867-4").fetch()
    assert [r.id for r in heart] == [observations[0].id]
    page = requests.get(
        f"{api_a}/fhir/Observation?patient={patient_id}&_count=1",
        headers={"Authorization": "Bearer " + token_a},
        timeout=60,
    ).json()
    validate(page)
    assert page["total"] == 2 and len(page["entry"]) == 1
    # The same search in the patient's compartment, and as POST _search with a form.
    compartment = requests.get(f"{api_a}/fhir/Patient/{patient_id}/Observation", headers=auth_a, timeout=60)
    assert compartment.status_code == 200, compartment.text
    compartment = validate(compartment.json())
    assert compartment["total"] == 2 and sorted(e["resource"]["id"] for e in compartment["entry"]) == sorted(r.id for r in found), compartment
    expect_outcome(requests.get(f"{api_a}/fhir/Patient/{patient_id}/Observation?patient={patient_id}", headers=auth_a, timeout=60), 400)
    posted = requests.post(f"{api_a}/fhir/Observation/_search", data={"patient": patient_id, "code": "http://loinc.org|8867-4"}, headers=auth_a, timeout=60)
    assert posted.status_code == 200, posted.text
    posted = validate(posted.json())
    assert [e["resource"]["id"] for e in posted["entry"]] == [observations[0].id], posted
    expect_outcome(requests.post(f"{api_a}/fhir/Observation/_search", json={"patient": patient_id}, headers=auth_a, timeout=60), 415)
    assert any(link["relation"] == "next" for link in page["link"])

    # Errors: malformed JSON 400, invalid resource 422, too large 413.
    headers = {"Authorization": "Bearer " + token_a, "Content-Type": FHIR_JSON}
    expect_outcome(requests.post(api_a + "/fhir/Observation", data=b"{not json", headers=headers, timeout=30), 400)
    invalid = expect_outcome(
        requests.post(api_a + "/fhir/Observation", json={"resourceType": "Observation", "subject": {"reference": "Patient/" + patient_id}}, headers=headers, timeout=30),
        422,
    )
    assert "Journeyperson" not in json.dumps(invalid)
    expect_outcome(requests.post(api_a + "/fhir/Binary", data=b"x" * (9 * 1024 * 1024), headers=headers, timeout=60), 413)

    # Faithful content: what comes back is the client's text, key order and every decimal
    # digit kept, unknown extensions untouched; only id and meta versions are the server's.
    sent = (
        '{"resourceType":"Observation","status":"final",'
        '"code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},'
        '"subject":{"reference":"Patient/' + patient_id + '"},'
        '"effectiveDateTime":"2026-11-21T08:00:00Z",'
        '"valueQuantity":{"value":1.50,"unit":"mg/dL"},'
        '"extension":[{"url":"http://example.org/precision","valueDecimal":12345678901234567890.00}]}'
    )
    created = requests.post(api_a + "/fhir/Observation", data=sent.encode(), headers=headers, timeout=60)
    assert created.status_code == 201, created.text
    faithful_id = created.json()["id"]

    def outside_meta(text):
        # The served text with its id and meta members removed: must equal what was sent.
        head, rest = text.split(',"meta":', 1)
        depth, end = 0, 0
        for i, ch in enumerate(rest):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0:
                end = i + 1
                break
        return head.split(',"id":')[0] + rest[end:]

    for served in [
        created.text,
        requests.get(f"{api_a}/fhir/Observation/{faithful_id}", headers=headers, timeout=60).text,
        requests.get(f"{api_a}/fhir/Observation/{faithful_id}/_history/1", headers=headers, timeout=60).text,
    ]:
        assert outside_meta(served) == sent, served
    hits = requests.get(f"{api_a}/fhir/Observation?patient={patient_id}&_id={faithful_id}", headers=headers, timeout=60).text
    assert '"valueQuantity":{"value":1.50,"unit":"mg/dL"}' in hits and "12345678901234567890.00" in hits, hits

    # Shapes FHIR JSON forbids are refused with the element's path, not stored.
    for bad, path in [
        ('{"resourceType":"Observation","status":"final","status":"final"', "Observation.status"),
        ('{"resourceType":"Observation","status":"final","note":[]', "Observation.note"),
        ('{"resourceType":"Observation","status":"final","issued":null', "Observation.issued"),
    ]:
        body = bad + ',"code":{"text":"x"},"subject":{"reference":"Patient/' + patient_id + '"}}'
        outcome = expect_outcome(requests.post(api_a + "/fhir/Observation", data=body.encode(), headers=headers, timeout=30), 422)
        assert path in json.dumps(outcome), outcome

    round_trip_examples(api_a, headers, patient_id)
    capability_claims_hold(api_a, headers, patient_id)
    scopes_are_enforced(clinician_a, patient_id, observations[0].id)

    # PATCH with JSON Patch: the untouched text keeps its bytes (1.50 stays 1.50), a failed
    # test writes nothing, and a stale If-Match is 412.
    patch_headers = {**headers, "Content-Type": "application/json-patch+json"}
    ops = [
        {"op": "test", "path": "/status", "value": "final"},
        {"op": "replace", "path": "/status", "value": "amended"},
        {"op": "add", "path": "/note", "value": [{"text": "checked twice"}]},
    ]
    patched = requests.patch(f"{api_a}/fhir/Observation/{faithful_id}", data=json.dumps(ops), headers={**patch_headers, "If-Match": 'W/"1"'}, timeout=60)
    assert patched.status_code == 200, patched.text
    assert patched.headers["ETag"] == 'W/"2"', patched.headers
    body = validate(patched.json())
    assert body["status"] == "amended" and body["note"] == [{"text": "checked twice"}], body
    assert '"valueQuantity":{"value":1.50,"unit":"mg/dL"}' in patched.text, patched.text
    stale = requests.patch(f"{api_a}/fhir/Observation/{faithful_id}", data=json.dumps(ops[1:2]), headers={**patch_headers, "If-Match": 'W/"1"'}, timeout=60)
    expect_outcome(stale, 412)
    failed = requests.patch(f"{api_a}/fhir/Observation/{faithful_id}", data=json.dumps(ops), headers=patch_headers, timeout=60)
    expect_outcome(failed, 422)
    expect_outcome(requests.patch(f"{api_a}/fhir/Observation/{faithful_id}", data=json.dumps(ops), headers={**headers, "Content-Type": "text/plain"}, timeout=60), 415)
    # A JSON array is no merge patch.
    expect_outcome(requests.patch(f"{api_a}/fhir/Observation/{faithful_id}", data=json.dumps(ops), headers=headers, timeout=60), 422)
    invalid_result = [{"op": "replace", "path": "/status", "value": "no-such-status"}]
    expect_outcome(requests.patch(f"{api_a}/fhir/Observation/{faithful_id}", data=json.dumps(invalid_result), headers=patch_headers, timeout=60), 422)
    current = requests.get(f"{api_a}/fhir/Observation/{faithful_id}", headers=headers, timeout=60)
    assert current.headers["ETag"] == 'W/"2"', current.headers

    # fhirpy's own patch (a merge patch of keyword changes), delete and transaction.
    merged = fhir_a.patch("Observation", faithful_id, note=[{"text": "merged"}])
    assert merged["meta"]["versionId"] == "3" and merged["note"] == [{"text": "merged"}], merged
    assert merged["status"] == "amended", merged
    assert '"valueQuantity":{"value":1.50,"unit":"mg/dL"}' in requests.get(f"{api_a}/fhir/Observation/{faithful_id}", headers=headers, timeout=60).text
    spare = fhir_a.resource("Observation", status="final", code={"text": "spare"}, subject={"reference": "Patient/" + patient_id})
    spare.save()
    fhir_a.delete("Observation", spare.id)
    expect_outcome(requests.get(f"{api_a}/fhir/Observation/{spare.id}", headers=headers, timeout=60), 410)
    answer = fhir_a.execute("", method="post", data={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "via fhirpy"}, "subject": {"reference": "Patient/" + patient_id}}},
    ]})
    assert validate(answer)["type"] == "transaction-response" and answer["entry"][0]["response"]["status"].startswith("201"), answer
    # A transaction may delete: the entry is a tombstone version, committed with the rest.
    doomed_in_tx = fhir_a.resource("Observation", status="final", code={"text": "to delete"}, subject={"reference": "Patient/" + patient_id})
    doomed_in_tx.save()
    answer = fhir_a.execute("", method="post", data={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": f"Observation/{doomed_in_tx.id}", "ifMatch": 'W/"1"'}},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "replacement"}, "subject": {"reference": "Patient/" + patient_id}}},
    ]})
    assert [e["response"]["status"].split()[0] for e in validate(answer)["entry"]] == ["204", "201"], answer
    expect_outcome(requests.get(f"{api_a}/fhir/Observation/{doomed_in_tx.id}", headers=headers, timeout=60), 410)

    # DELETE is a logical delete: a new version marked deleted. The read is 410, searches
    # leave it out, the history shows it, earlier versions stay, and an update brings it back.
    doomed = requests.post(api_a + "/fhir/Observation", data=sent.encode(), headers=headers, timeout=60)
    assert doomed.status_code == 201, doomed.text
    doomed_id = doomed.json()["id"]
    doomed_url = f"{api_a}/fhir/Observation/{doomed_id}"
    expect_outcome(requests.delete(doomed_url, headers={**headers, "If-Match": 'W/"7"'}, timeout=60), 412)
    gone = requests.delete(doomed_url, headers=headers, timeout=60)
    assert gone.status_code == 204 and gone.headers["ETag"] == 'W/"2"', (gone.status_code, gone.headers)
    assert "deleted" in json.dumps(expect_outcome(requests.get(doomed_url, headers=headers, timeout=60), 410))
    expect_outcome(requests.get(doomed_url + "/_history/2", headers=headers, timeout=60), 410)
    assert requests.get(doomed_url + "/_history/1", headers=headers, timeout=60).status_code == 200
    trail = validate(requests.get(doomed_url + "/_history", headers=headers, timeout=60).json())
    assert trail["total"] == 2 and trail["entry"][0]["request"]["method"] == "DELETE", trail
    assert "resource" not in trail["entry"][0], trail
    searched = requests.get(f"{api_a}/fhir/Observation?patient={patient_id}&_id={doomed_id}", headers=headers, timeout=60).json()
    assert searched["total"] == 0, searched
    again = requests.delete(doomed_url, headers=headers, timeout=60)
    assert again.status_code == 204 and again.headers["ETag"] == 'W/"2"', again.headers
    revived = requests.put(doomed_url, data=sent.replace('{"resourceType":"Observation",', '{"resourceType":"Observation","id":"' + doomed_id + '",', 1).encode(), headers=headers, timeout=60)
    assert revived.status_code == 200 and revived.headers["ETag"] == 'W/"3"', revived.text
    assert requests.get(doomed_url, headers=headers, timeout=60).status_code == 200

    # Nothing is silently ignored: an unsupported parameter is refused and named, or under
    # Prefer: handling=lenient ignored with an OperationOutcome entry saying so.
    refused = expect_outcome(
        requests.get(f"{api_a}/fhir/Condition?patient={patient_id}&clinical-status=resolved", headers=headers, timeout=30), 400
    )
    assert "clinical-status" in json.dumps(refused)
    expect_outcome(requests.get(f"{api_a}/fhir/Observation?patient={patient_id}&date=2026-13-45", headers=headers, timeout=30), 400)
    lenient = requests.get(
        f"{api_a}/fhir/Condition?patient={patient_id}&_elements=code",
        headers={**headers, "Prefer": "handling=lenient"},
        timeout=60,
    ).json()
    validate(lenient)
    assert [e["search"]["mode"] for e in lenient["entry"]].count("outcome") == 1, lenient
    assert all("_elements" not in link["url"] for link in lenient["link"]), lenient
    # `_sort` takes only keys this type has: Condition has no date parameter in R4.
    expect_outcome(requests.get(f"{api_a}/fhir/Condition?patient={patient_id}&_sort=date", headers=headers, timeout=30), 400)
    for claimed in statement["rest"][0]["resource"]:
        for param in claimed.get("searchParam", []):
            assert param["definition"].startswith("http://hl7.org/fhir/SearchParameter/"), param

    # Negotiation and routing errors are OperationOutcomes: XML is 406, an unknown path 404,
    # a method a path does not take 405; a transaction posted to "/fhir/" is served.
    expect_outcome(requests.get(f"{api_a}/fhir/Patient/{patient_id}", headers={**headers, "Accept": "application/fhir+xml"}, timeout=30), 406)
    expect_outcome(requests.get(f"{api_a}/fhir/Patient/{patient_id}?_format=xml", headers=headers, timeout=30), 406)
    expect_outcome(requests.get(f"{api_a}/fhir/Patient/{patient_id}/a/b/c", headers=headers, timeout=30), 404)
    expect_outcome(requests.patch(f"{api_a}/fhir/Condition", data=b"{}", headers=headers, timeout=30), 405)
    slash = requests.post(api_a + "/fhir/", json={"resourceType": "Bundle", "type": "batch", "entry": []}, headers=headers, timeout=30)
    assert slash.status_code != 404, slash.text
    assert requests.get(api_a + "/fhir/.well-known/smart-configuration", timeout=30).status_code == 200

    # Conditional interactions and preferences: If-None-Match answers 304 for the version the
    # client holds; If-None-Exist creates once; PUT [type]?query updates the one match;
    # Prefer: return=minimal answers without a body; $validate stores nothing.
    current = requests.get(f"{api_a}/fhir/Observation/{faithful_id}", headers=headers, timeout=60)
    unchanged = requests.get(f"{api_a}/fhir/Observation/{faithful_id}", headers={**headers, "If-None-Match": current.headers["ETag"]}, timeout=60)
    assert unchanged.status_code == 304 and not unchanged.content, unchanged
    lab = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:example:lab", "value": "order-17"}],
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": "Patient/" + patient_id},
    }
    once_headers = {**headers, "If-None-Exist": "identifier=urn:example:lab|order-17"}
    first = requests.post(api_a + "/fhir/Observation", json=lab, headers=once_headers, timeout=60)
    again = requests.post(api_a + "/fhir/Observation", json=lab, headers=once_headers, timeout=60)
    assert first.status_code == 201 and again.status_code == 200, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    lab_id = first.json()["id"]
    found = requests.get(f"{api_a}/fhir/Observation?patient={patient_id}&identifier=order-17", headers=headers, timeout=60).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [lab_id], found
    lab["status"] = "final"
    updated = requests.put(
        api_a + "/fhir/Observation?identifier=urn:example:lab|order-17",
        json=lab,
        headers={**headers, "Prefer": "return=minimal"},
        timeout=60,
    )
    assert updated.status_code == 200 and not updated.content and updated.headers["ETag"] == 'W/"2"', updated
    stale = requests.put(f"{api_a}/fhir/Observation/{lab_id}", json=dict(lab, id=lab_id), headers={**headers, "If-Match": 'W/"1"'}, timeout=60)
    expect_outcome(stale, 412)
    checked = requests.post(api_a + "/fhir/Observation/$validate", json={"resourceType": "Observation", "code": {"text": "x"}}, headers=headers, timeout=30)
    assert checked.status_code == 200, checked.text
    assert any(i["severity"] == "error" for i in validate(checked.json())["issue"]), checked.text
    ok = requests.post(api_a + "/fhir/Observation/$validate", json={"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": lab}]}, headers=headers, timeout=30)
    assert [i["severity"] for i in ok.json()["issue"]] == ["information"], ok.text
    everything_post = requests.post(f"{api_a}/fhir/Patient/{patient_id}/$everything", headers=headers, timeout=60)
    assert everything_post.status_code == 200 and everything_post.json()["type"] == "searchset", everything_post.text

    # The patient logs in (their home node keeps their key) and grants clinician B.
    # The new patient is custodial: their key lives at A's node; they sign in there with a
    # token of an identity from identities.json only, so the grant here is made by the demo
    # patient whose home is A, on their own record.
    demo_patient = next(p for p in by_role["patient"] if p["institution"] == clinician_a["institution"])
    demo_patient_id = demo_patient["patient"]
    fhir_p, token_p = client(demo_patient)
    own = fhir_p.resources("Observation").search(patient=demo_patient_id).fetch()
    assert own, "the demo patient has observations"
    record = own[0]
    validate(record.serialize())
    # A patient reads their records but does not write them: refused, and recorded.
    written_by_patient = requests.post(
        f"{demo_patient['api']}/fhir/Observation",
        headers={"Authorization": "Bearer " + token_p, "Content-Type": "application/fhir+json"},
        data=json.dumps({k: v for k, v in record.serialize().items() if k not in ("id", "meta")}),
        timeout=60,
    )
    assert "recorded on chain" in json.dumps(expect_outcome(written_by_patient, 403))

    fhir_b, token_b = client(clinician_b)
    # Before consent, B is refused, and the refusal is an OperationOutcome.
    refused = requests.get(
        f"{clinician_b['api']}/fhir/Observation/{record.id}",
        headers={"Authorization": "Bearer " + token_b},
        timeout=60,
    )
    expect_outcome(refused, 403)

    # A transaction is all or nothing: B's entry for a patient of B's own institution is
    # allowed, the next one (A's patient, no consent) is not, so neither is written; the
    # refusal is the failing entry's OperationOutcome. A stale ifMatch fails it the same way.
    home_b = next(p for p in by_role["patient"] if p["institution"] == clinician_b["institution"])["patient"]
    auth_b = {"Authorization": "Bearer " + token_b, "Content-Type": FHIR_JSON}
    def lab_entry(patient, marker):
        return {"request": {"method": "POST", "url": "Observation"}, "resource": {
            "resourceType": "Observation", "status": "final",
            "identifier": [{"system": "urn:example:atomic", "value": marker}],
            "code": {"text": "potassium"}, "subject": {"reference": "Patient/" + patient}}}
    mixed = {"resourceType": "Bundle", "type": "transaction", "entry": [lab_entry(home_b, "t-1"), lab_entry(demo_patient_id, "t-2")]}
    refused_tx = expect_outcome(requests.post(clinician_b["api"] + "/fhir", json=mixed, headers=auth_b, timeout=120), 403)
    assert "entry 1" in json.dumps(refused_tx), refused_tx
    left = requests.get(f"{clinician_b['api']}/fhir/Observation?patient={home_b}&identifier=urn:example:atomic|t-1", headers=auth_b, timeout=60).json()
    assert left["total"] == 0, left
    stale_tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        lab_entry(patient_id, "t-3"),
        {"request": {"method": "PUT", "url": f"Observation/{lab_id}", "ifMatch": 'W/"1"'}, "resource": dict(lab, id=lab_id)},
    ]}
    expect_outcome(requests.post(api_a + "/fhir", json=stale_tx, headers=headers, timeout=120), 412)

    # A batch answers entry by entry: a read, a create, and a refused write, each on its own.
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{faithful_id}"}},
        lab_entry(home_b, "b-1"),
        lab_entry(demo_patient_id, "b-2"),
        {"request": {"method": "GET", "url": f"Observation?patient={home_b}&identifier=b-1"}},
    ]}
    answered = requests.post(clinician_b["api"] + "/fhir", json=batch, headers=auth_b, timeout=120)
    assert answered.status_code == 200, answered.text
    statuses = [e["response"]["status"].split()[0] for e in validate(answered.json())["entry"]]
    assert statuses == ["403", "201", "403", "200"], statuses
    assert answered.json()["entry"][3]["resource"]["total"] == 1

    consent = fhir_p.resource(
        "Consent",
        status="active",
        scope={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        category=[{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        patient={"reference": "Patient/" + demo_patient_id},
        provision={
            "type": "permit",
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"reference": "Practitioner/" + clinician_b["practitioner"]},
            }],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
        },
    )
    # B may not give itself consent: refused, and the attempt is recorded on chain.
    self_granted = requests.post(
        f"{clinician_b['api']}/fhir/Consent",
        headers={"Authorization": "Bearer " + token_b, "Content-Type": "application/fhir+json"},
        data=json.dumps(consent.serialize()),
        timeout=60,
    )
    assert "recorded on chain" in json.dumps(expect_outcome(self_granted, 403))
    consent.save()
    validate(consent.serialize())
    assert consent["status"] == "active"

    # B reads through B's own node.
    seen = None
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            seen = fhir_b.reference("Observation", record.id).to_resource()
            break
        except (FhirpyOutcome, ForbiddenError) as error:
            # The envelope and the shared key reach B's node from its peers shortly.
            # A 503 "transient" outcome means the same: retry shortly.
            if not any(m in str(error) for m in ("does not hold the record yet", "holds no key", "still reaching this node")):
                raise
            time.sleep(0.5)
    assert seen is not None and seen.id == record.id
    validate(seen.serialize())
    assert seen["code"] == record["code"]

    # The patient revokes; B is refused again.
    consent["status"] = "inactive"
    consent.save()
    assert consent["status"] == "inactive"
    # B's node decides reads against its own final state: the revocation binds there as soon
    # as that node has applied the block (the patient's node answered once its own had).
    # Between the two, B's node may already have deleted the keys the revocation withdraws
    # and refuse with "holds no key": still a refusal, and the next answer names the rule.
    for _ in range(40):
        refused = requests.get(
            f"{clinician_b['api']}/fhir/Observation/{record.id}",
            headers={"Authorization": "Bearer " + token_b},
            timeout=60,
        )
        if refused.status_code != 200 and "holds no key" not in refused.text:
            break
        time.sleep(0.25)
    body = expect_outcome(refused, 403)
    assert "revoked" in json.dumps(body), body

    # The trail: the patient sees their own, the auditor everyone's; B may not look. B's
    # served read reaches the chain in its node's next access log.
    b_ref = "Practitioner/" + clinician_b["practitioner"]
    for _ in range(40):
        trail = fhir_p.resources("AuditEvent").search(patient=demo_patient_id).fetch_all()
        readers = [(e["agent"][0]["who"]["reference"], e["outcome"]) for e in trail]
        if (b_ref, "0") in readers and (b_ref, "4") in readers:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"B's reads are not on the trail: {readers}")
    for event in trail:
        validate(event.serialize())
    fhir_audit, _ = client(auditor)
    everything = fhir_audit.resources("AuditEvent").search(_count=100).fetch()
    assert everything, "the auditor sees the trail"
    for event in everything:
        validate(event.serialize())
    expect_outcome(
        requests.get(
            f"{clinician_b['api']}/fhir/AuditEvent?patient={demo_patient_id}",
            headers={"Authorization": "Bearer " + token_b},
            timeout=30,
        ),
        403,
    )
    # ... and that refused search is itself on the patient's trail (the patient's node may
    # be a block behind B's).
    for _ in range(40):
        trail = fhir_p.resources("AuditEvent").search(patient=demo_patient_id).fetch_all()
        if any(e["agent"][0]["who"]["reference"] == b_ref and e["outcome"] == "4" and e["action"] == "E"
               for e in trail):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("B's refused trail search is not on the trail")
    if exe:
        # An operator enrols a new clinician for FHIR use: the node keeps only their
        # decryption key; the clinician logs in with their own key and reads what they wrote.
        new_key = os.path.join(tempfile.mkdtemp(), "dr-new.key")
        new_id = subprocess.run(
            [exe, "identity", "enroll", "--api", api_a, "--key", os.path.join(home, "node-0", "validator.key"),
             "--out", new_key, "--custody", os.path.join(home, "node-0", "data", "custody")],
            capture_output=True, text=True, check=True).stdout.strip()
        seed = bytes.fromhex(open(new_key).read().strip())
        newcomer = {"id": new_id, "api": api_a, "private_key": base64.urlsafe_b64encode(seed).decode().rstrip("=")}
        fhir_new, _ = client(newcomer)
        note = fhir_new.resource(
            "Observation", status="final",
            code={"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            subject={"reference": "Patient/" + patient_id}, valueQuantity={"value": 120})
        note.save()
        assert fhir_new.reference("Observation", note.id).to_resource()["valueQuantity"]["value"] == 120
        client_keys_log_in(exe, api_a, new_key, newcomer, note.id)

    print("journey complete:", len(trail), "audit events for the patient")


if __name__ == "__main__":
    main(sys.argv[1])
