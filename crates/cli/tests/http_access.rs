//! Every HTTP route, asked by every kind of caller, against a table of what each may see.
//!
//! `ehrchain dev` starts the demo network. Patient 1 then reads one of their own Observations
//! (an access on the trail) and grants clinician 2 (at the other institution) read access to
//! Immunizations only. Then each route of the chain's own API (`/chain`, `/records`,
//! `/patients`, `/identities`, `/access`, `/consents`, `/governance`) and FHIR `Provenance` is
//! asked by: no one (no token), patient 1, patient 2, clinician 1 (the author of patient 1's
//! records, at their home institution), clinician 2 (no consent for that Observation), the
//! auditor, and institution 0. Each answer's status is compared with the table, and where a
//! route answers several callers, what it reveals is checked too: a block's transactions of
//! patient 1 only to those they concern, a patient's record list and consents only as far as
//! the caller may see them. The test prints the number of mismatches, and asserts 0.
//! The open routes (metrics, CapabilityStatement, SMART discovery) answer without a token.

mod common;

use common::{agent, cli, ok, path, token};
use serde_json::Value;
use std::time::Duration;

// Below the ephemeral range (32768-60999), so no outgoing connection can hold it.
const P2P_PORT: u16 = 25_000;
const API_PORT: u16 = 10_480;

const ACTORS: [&str; 7] = [
    "anonymous",
    "patient 1",
    "patient 2",
    "clinician 1 (author)",
    "clinician 2 (no consent)",
    "auditor",
    "institution 0",
];

/// One request as one caller: its status and body.
fn ask(method: &str, url: &str, token: Option<&str>) -> (u16, Value) {
    let agent = agent();
    let mut response = match method {
        "GET" => {
            let mut request = agent.get(url);
            if let Some(t) = token {
                request = request.header("Authorization", format!("Bearer {t}"));
            }
            request.call()
        }
        _ => {
            let mut request = agent
                .post(url)
                .header("content-type", "application/octet-stream");
            if let Some(t) = token {
                request = request.header("Authorization", format!("Bearer {t}"));
            }
            request.send(&b"\x00\x00"[..])
        }
    }
    .expect("reach the node");
    let status = response.status().as_u16();
    let body = response.body_mut().read_json().unwrap_or(Value::Null);
    (status, body)
}

#[test]
fn every_route_answers_each_caller_only_what_it_may_see() {
    let dir = std::env::temp_dir().join(format!("ehrchain-http-access-{}", std::process::id()));
    let (mut dev, identities) = common::dev_network(&dir, P2P_PORT, API_PORT);
    let api = common::api_url(&dir, API_PORT);
    let people: Vec<Value> = serde_json::from_slice(&std::fs::read(&identities).unwrap()).unwrap();
    let person = |role: &str, n: usize| {
        people
            .iter()
            .filter(|p| p["role"] == role)
            .nth(n)
            .unwrap_or_else(|| panic!("no {role} {n} in identities.json"))
            .clone()
    };
    let p1 = person("patient", 0)["patient"]
        .as_str()
        .unwrap()
        .to_string();
    let keys = dir.join("identities");
    let key_files = [
        None,
        Some(keys.join("patient-1.key")),
        Some(keys.join("patient-2.key")),
        Some(keys.join("clinician-1.key")),
        Some(keys.join("clinician-2.key")),
        Some(dir.join("auditor.key")),
        Some(dir.join("node-0/validator.key")),
    ];
    let tokens: Vec<Option<String>> = key_files
        .iter()
        .map(|k| k.as_ref().map(|k| token(&api, k)))
        .collect();
    let institution = tokens[6].as_deref();

    // Patient 1's first Observation, and the block that anchored it.
    let (_, registration) = ask("GET", &format!("{api}/patients/{p1}"), institution);
    let observation_code = ehrchain_fhir::ResourceType::Observation.code();
    let (record, history) = registration["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .find_map(|r| {
            let (_, history) = ask("GET", &format!("{api}/records/{r}"), institution);
            (history["versions"][0]["resource_type"] == observation_code).then_some((r, history))
        })
        .expect("the demo patient has an Observation");
    let anchored_at = history["versions"][0]["height"].as_u64().unwrap();

    // Patient 1 reads it (an access on chain) and grants clinician 2 Immunizations only.
    let read = ok(cli(&[
        "record",
        "get",
        "--api",
        &api,
        "--key",
        path(key_files[1].as_ref().unwrap()),
        "--record",
        &record,
    ]));
    assert!(read.contains("Observation"));
    let clinician_2 = person("clinician", 1)["id"].as_str().unwrap().to_string();
    ok(cli(&[
        "consent",
        "grant",
        "--api",
        &api,
        "--key",
        path(key_files[1].as_ref().unwrap()),
        "--patient",
        &p1,
        "--grantee",
        &clinician_2,
        "--type",
        "Immunization",
        "--purpose",
        "TREAT",
    ]));
    let (_, trail) = ask(
        "GET",
        &format!("{api}/patients/{p1}/access"),
        tokens[5].as_deref(),
    );
    let access = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["record"] == record.as_str() && e["outcome"] == "allowed")
        .expect("patient 1's read is on the trail")["transaction"]
        .as_str()
        .unwrap()
        .to_string();
    let patient_1_encryption = registration["encryption_key"].as_str().unwrap().to_string();
    let clinician_1_key = person("clinician", 0)["id"].as_str().unwrap().to_string();

    // The table: for each route, the status each of ACTORS gets.
    const ALL: [u16; 7] = [401, 200, 200, 200, 200, 200, 200];
    const RECORD: [u16; 7] = [401, 200, 403, 200, 403, 200, 200];
    const TRAIL: [u16; 7] = [401, 200, 403, 403, 403, 200, 403];
    const AUDITOR: [u16; 7] = [401, 403, 403, 403, 403, 200, 403];
    const BAD_BODY: [u16; 7] = [401, 400, 400, 400, 400, 400, 400];
    let routes: Vec<(&str, String, [u16; 7])> = vec![
        ("GET", format!("{api}/chain/status"), ALL),
        ("GET", format!("{api}/chain/blocks/{anchored_at}"), ALL),
        (
            "GET",
            format!("{api}/chain/blocks/{anchored_at}/transactions"),
            ALL,
        ),
        ("GET", format!("{api}/chain/transactions/{access}"), ALL),
        (
            "GET",
            format!("{api}/chain/accounts/{clinician_1_key}"),
            ALL,
        ),
        ("POST", format!("{api}/chain/transactions"), BAD_BODY),
        ("POST", format!("{api}/chain/transactions/batch"), BAD_BODY),
        ("GET", format!("{api}/records/{record}"), RECORD),
        ("GET", format!("{api}/records/{record}/1/envelope"), RECORD),
        (
            "GET",
            format!("{api}/records/{record}/1/wraps/{patient_1_encryption}?access={access}"),
            [401, 200, 403, 403, 403, 403, 403],
        ),
        ("POST", format!("{api}/records"), BAD_BODY),
        (
            "GET",
            format!("{api}/patients/{p1}"),
            [401, 200, 403, 200, 200, 200, 200],
        ),
        ("GET", format!("{api}/patients/{p1}/consents"), ALL),
        ("GET", format!("{api}/patients/{p1}/access"), TRAIL),
        (
            "GET",
            format!("{api}/patients/{p1}/readers?type={observation_code}"),
            [401, 403, 403, 200, 403, 403, 200],
        ),
        ("POST", format!("{api}/consents"), BAD_BODY),
        ("GET", format!("{api}/access/events"), AUDITOR),
        (
            "GET",
            format!("{api}/access/events/{access}"),
            [401, 200, 404, 404, 404, 200, 404],
        ),
        ("GET", format!("{api}/access/findings"), AUDITOR),
        ("GET", format!("{api}/access/reasons"), ALL),
        (
            "GET",
            format!("{api}/governance/proposals"),
            [401, 403, 403, 403, 403, 200, 200],
        ),
        ("GET", format!("{api}/identities/{clinician_1_key}"), ALL),
        (
            "GET",
            format!("{api}/chain/blocks/{anchored_at}/proof"),
            ALL,
        ),
        // The web UI's own endpoints: the role decides, after the token.
        ("GET", format!("{api}/ui/me"), ALL),
        ("GET", format!("{api}/ui/directory"), ALL),
        (
            "GET",
            format!("{api}/ui/patients"),
            [401, 403, 403, 200, 200, 403, 403],
        ),
        // A patient's own record, sealed for their key: the patient alone.
        (
            "GET",
            format!("{api}/ui/sealed?count=5"),
            [401, 200, 200, 403, 403, 403, 403],
        ),
        (
            "POST",
            format!("{api}/ui/break-glass"),
            [401, 400, 400, 400, 400, 400, 400],
        ),
        // A review names a finding: only an auditor, and there is none at block 0.
        (
            "POST",
            format!("{api}/ui/findings/0/0/0/review"),
            [401, 403, 403, 403, 403, 400, 403],
        ),
        (
            "POST",
            format!("{api}/ui/guardians"),
            [401, 400, 400, 400, 400, 400, 400],
        ),
        // Not a guardian of anyone: the patient learns so; anyone else may not remove one.
        (
            "POST",
            format!("{api}/ui/guardians/{clinician_1_key}/remove"),
            [401, 404, 404, 403, 403, 403, 403],
        ),
        (
            "GET",
            format!("{api}/ui/clinicians"),
            [401, 403, 403, 403, 403, 403, 200],
        ),
        (
            "POST",
            // Another institution's clinician: only the chain can refuse institution 0.
            format!("{api}/ui/clinicians/{clinician_2}/remove"),
            [401, 403, 403, 403, 403, 403, 403],
        ),
        (
            "GET",
            format!("{api}/fhir/Provenance?target=Observation/{record}"),
            RECORD,
        ),
        // Reading the content itself is the consent contract's alone: the auditor and the
        // institution without a grant are refused (and the attempt recorded).
        (
            "GET",
            format!("{api}/fhir/Observation/{record}"),
            [401, 200, 403, 200, 403, 403, 403],
        ),
    ];
    let mut mismatches = Vec::new();
    let mut asked = 0;
    for (method, url, expected) in &routes {
        for (actor, token) in tokens.iter().enumerate() {
            let (status, body) = ask(method, url, token.as_deref());
            asked += 1;
            let route = url.trim_start_matches(&api);
            if status != expected[actor] {
                mismatches.push(format!(
                    "{method} {route} as {}: {status}, expected {}",
                    ACTORS[actor], expected[actor]
                ));
                continue;
            }
            if status != 200 {
                continue;
            }
            // What a 200 reveals.
            let text = body.to_string();
            if route.starts_with("/chain/blocks/")
                && !route.ends_with("/transactions")
                && !route.ends_with("/proof")
            {
                let sees = [false, true, false, true, false, true, true][actor];
                if text.contains(&p1) != sees {
                    mismatches.push(format!(
                        "{method} {route} as {}: patient 1's transactions {}",
                        ACTORS[actor],
                        if sees { "hidden" } else { "shown" }
                    ));
                }
            }
            if route == format!("/patients/{p1}") {
                let listed = body["records"].as_array().map_or(0, Vec::len);
                let sees_record = listed > 0 && text.contains(&record);
                if sees_record != (RECORD[actor] == 200) {
                    mismatches.push(format!(
                        "{method} {route} as {}: record list {text}",
                        ACTORS[actor]
                    ));
                }
            }
            if route == "/chain/status" {
                // The trail's totals are figures about everyone: members and auditors only.
                let sees = [false, false, false, false, false, true, true][actor];
                if body.get("access_events").is_some() != sees {
                    mismatches.push(format!(
                        "{method} {route} as {}: trail totals {}",
                        ACTORS[actor],
                        if sees { "hidden" } else { "shown" }
                    ));
                }
            }
            if route.ends_with("/consents") {
                let count = body["consents"].as_array().map_or(0, Vec::len);
                // All of them for the patient and the auditor; clinician 2 its own grant;
                // nobody else any.
                let expected_count = [0, 1, 0, 0, 1, 1, 0][actor];
                if count != expected_count {
                    mismatches.push(format!(
                        "{method} {route} as {}: {count} consents shown, expected {expected_count}",
                        ACTORS[actor]
                    ));
                }
            }
        }
    }
    // The open routes.
    for route in [
        "/metrics",
        "/fhir/metadata",
        "/fhir/.well-known/smart-configuration",
        "/.well-known/smart-configuration",
    ] {
        let response = agent()
            .get(format!("{api}{route}"))
            .call()
            .expect("reach the node");
        if response.status() != 200 {
            mismatches.push(format!(
                "GET {route} without a token: {}",
                response.status()
            ));
        }
    }
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = std::process::Command::new("pkill")
        .arg("-f")
        .arg(&dir)
        .status();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "{asked} requests over {} routes by {} kinds of caller: {} mismatches",
        routes.len(),
        ACTORS.len(),
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
