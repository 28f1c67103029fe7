// The FHIR API as a JavaScript FHIR app sees it: fhir-kit-client (npm) makes every FHIR call,
// jose signs the SMART Backend Services assertions (EdDSA), and FHIR.js (npm `fhir`, R4)
// validates every resource that comes back with unexpected elements as errors. Nothing here
// knows ehrchain beyond the SMART discovery document and identities.json.
//
// Walked: login; create a Patient and an Observation; read; update; JSON Patch; delete; conditional
// create twice (one resource); conditional update; a transaction whose second entry is
// refused, which leaves nothing written; a batch answered entry by entry; search.
//
// Usage: node kit.mjs IDENTITIES_JSON   (EHRCHAIN_NODE_MODULES names the npm modules)

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { randomUUID } from "node:crypto";

const modules = process.env.EHRCHAIN_NODE_MODULES;
assert.ok(modules, "EHRCHAIN_NODE_MODULES names the directory holding fhir-kit-client, fhir and jose");
const { Client } = await import(path.join(modules, "fhir-kit-client/dist/index.js"));
const { SignJWT, importJWK } = await import(path.join(modules, "jose/dist/webapi/index.js"));
const { Fhir } = createRequire(import.meta.url)(path.join(modules, "fhir"));
const fhirJs = new Fhir();

function valid(resource) {
  const result = fhirJs.validate(resource, { errorOnUnexpected: true });
  const errors = result.messages.filter((m) => m.severity === "error");
  assert.deepEqual(errors, [], `${resource.resourceType} fails FHIR.js R4 validation`);
  for (const entry of resource.resourceType === "Bundle" ? resource.entry ?? [] : []) {
    if (entry.resource) valid(entry.resource);
  }
  return resource;
}

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");

async function login(identity, scope) {
  const config = await (await fetch(`${identity.api}/fhir/.well-known/smart-configuration`)).json();
  const key = await importJWK(
    { kty: "OKP", crv: "Ed25519", d: identity.private_key.replace(/=+$/, ""), x: b64url(Buffer.from(identity.id, "hex")) },
    "EdDSA",
  );
  const now = Math.floor(Date.now() / 1000);
  const assertion = await new SignJWT({ jti: randomUUID() })
    .setProtectedHeader({ alg: "EdDSA" })
    .setIssuer(identity.id)
    .setSubject(identity.id)
    .setAudience(config.token_endpoint)
    .setExpirationTime(now + 240)
    .sign(key);
  const form = new URLSearchParams({
    grant_type: "client_credentials",
    client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    client_assertion: assertion,
  });
  if (scope) form.set("scope", scope);
  const answer = await fetch(config.token_endpoint, { method: "POST", body: form });
  assert.equal(answer.status, 200, await answer.clone().text());
  const token = await answer.json();
  return new Client({ baseUrl: `${identity.api}/fhir`, bearerToken: token.access_token });
}

async function refused(promise, status) {
  try {
    await promise;
  } catch (error) {
    assert.equal(error.response?.status, status, error.message);
    const body = typeof error.response.data === "string" ? JSON.parse(error.response.data) : error.response.data;
    assert.equal(valid(body).resourceType, "OperationOutcome");
    return body;
  }
  assert.fail(`expected ${status}`);
}

const identities = JSON.parse(readFileSync(process.argv[2], "utf8"));
const clinicians = identities.filter((i) => i.role === "clinician");
const [a, b] = clinicians;
assert.notEqual(a.institution, b.institution);
const kitA = await login(a);
const kitB = await login(b);

// Create, read, update, patch.
const patient = valid(await kitA.create({ resourceType: "Patient", body: { resourceType: "Patient", name: [{ family: "Kitperson" }], birthDate: "1990-05-17" } }));
assert.match(patient.id, /^[0-9a-f]{32}$/);
const observation = {
  resourceType: "Observation",
  status: "preliminary",
  code: { coding: [{ system: "http://loinc.org", code: "2339-0", display: "Glucose" }] },
  subject: { reference: `Patient/${patient.id}` },
  effectiveDateTime: "2026-11-30T09:00:00Z",
  valueQuantity: { value: 5.4, unit: "mmol/L", system: "http://unitsofmeasure.org", code: "mmol/L" },
};
const created = valid(await kitA.create({ resourceType: "Observation", body: observation }));
assert.equal(created.meta.versionId, "1");
const read = valid(await kitA.read({ resourceType: "Observation", id: created.id }));
assert.equal(read.valueQuantity.value, 5.4);
const updated = valid(await kitA.update({ resourceType: "Observation", id: created.id, body: { ...read, status: "final" } }));
assert.equal(updated.meta.versionId, "2");
const patched = valid(await kitA.patch({
  resourceType: "Observation",
  id: created.id,
  jsonPatch: [
    { op: "test", path: "/status", value: "final" },
    { op: "add", path: "/interpretation", value: [{ coding: [{ system: "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", code: "N" }] }] },
  ],
}));
assert.equal(patched.meta.versionId, "3");
assert.equal(patched.interpretation[0].coding[0].code, "N");
await refused(kitA.patch({ resourceType: "Observation", id: created.id, jsonPatch: [{ op: "test", path: "/status", value: "preliminary" }] }), 422);
const vread = valid(await kitA.vread({ resourceType: "Observation", id: created.id, version: "1" }));
assert.equal(vread.status, "preliminary");

// Delete: a logical delete; the read is 410, the earlier versions stay.
const doomed = valid(await kitA.create({ resourceType: "Observation", body: observation }));
await kitA.delete({ resourceType: "Observation", id: doomed.id });
await refused(kitA.read({ resourceType: "Observation", id: doomed.id }), 410);
valid(await kitA.vread({ resourceType: "Observation", id: doomed.id, version: "1" }));
const history = valid(await kitA.history({ resourceType: "Observation", id: doomed.id }));
assert.equal(history.entry[0].request.method, "DELETE");

// Conditional create: the second post finds the first.
const marker = `kit-${randomUUID()}`;
const tagged = { ...observation, identifier: [{ system: "urn:example:kit", value: marker }] };
const ifNoneExist = { headers: { "If-None-Exist": `identifier=urn:example:kit|${marker}` } };
const first = valid(await kitA.create({ resourceType: "Observation", body: tagged, options: ifNoneExist }));
const second = valid(await kitA.create({ resourceType: "Observation", body: tagged, options: ifNoneExist }));
assert.equal(second.id, first.id);
// Conditional update: the one match gets a new version.
const conditional = valid(await kitA.update({
  resourceType: "Observation",
  searchParams: { identifier: `urn:example:kit|${marker}`, patient: patient.id },
  body: { ...tagged, status: "final" },
}));
assert.equal(conditional.id, first.id);
assert.equal(conditional.meta.versionId, "2");

// Search.
const found = valid(await kitA.search({ resourceType: "Observation", searchParams: { patient: patient.id, _count: 10 } }));
assert.equal(found.total, 2);

// A transaction whose second entry B may not write (A's patient, no consent): 403, and
// nothing of the first is written.
const own = valid(await kitB.create({ resourceType: "Patient", body: { resourceType: "Patient", name: [{ family: "Kitother" }] } }));
const entry = (patientId, value) => ({
  fullUrl: `urn:uuid:${randomUUID()}`,
  request: { method: "POST", url: "Observation" },
  resource: { ...observation, subject: { reference: `Patient/${patientId}` }, identifier: [{ system: "urn:example:kit-tx", value }] },
});
const outcome = await refused(kitB.transaction({ body: { resourceType: "Bundle", type: "transaction", entry: [entry(own.id, marker), entry(patient.id, marker)] } }), 403);
assert.match(JSON.stringify(outcome), /entry 1/);
const left = valid(await kitB.search({ resourceType: "Observation", searchParams: { patient: own.id, identifier: `urn:example:kit-tx|${marker}` } }));
assert.equal(left.total, 0);
// The same transaction for B's own patient alone commits.
const committed = valid(await kitB.transaction({ body: { resourceType: "Bundle", type: "transaction", entry: [entry(own.id, marker)] } }));
assert.equal(committed.type, "transaction-response");
assert.match(committed.entry[0].response.status, /^201/);

// A batch: a read, a create, an invalid create, each answered on its own.
const batch = valid(await kitA.batch({ body: { resourceType: "Bundle", type: "batch", entry: [
  { request: { method: "GET", url: `Observation/${created.id}` } },
  { request: { method: "POST", url: "Observation" }, resource: observation },
  { request: { method: "POST", url: "Observation" }, resource: { ...observation, status: "done-ish" } },
] } }));
assert.deepEqual(batch.entry.map((e) => e.response.status.split(" ")[0]), ["200", "201", "422"]);

// A narrow token: its scopes bound every call.
const narrow = await login(a, "system/Observation.rs");
valid(await narrow.read({ resourceType: "Observation", id: created.id }));
await refused(narrow.create({ resourceType: "Observation", body: observation }), 403);
await refused(narrow.read({ resourceType: "Patient", id: patient.id }), 403);

console.log("fhir-kit-client journey: ok");
