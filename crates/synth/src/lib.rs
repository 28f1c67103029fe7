//! Generate realistic synthetic patients and their FHIR R4 records, repeatably from a seed.
//!
//! Codes are real: LOINC for vital signs and laboratory results, SNOMED CT for conditions,
//! allergies and procedures, RxNorm for medications, CVX for vaccines. Names, dates and values
//! are drawn from the seeded generator, so a seed always gives the same patients.

use rand::{RngExt as _, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

const GIVEN: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaja",
    "Luis", "Mira", "Noah", "Olga", "Pavel", "Rosa", "Sami", "Tilde", "Umar",
];
const FAMILY: &[&str] = &[
    "Andersen", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat", "Ivanova",
    "Jansen", "Kowalski", "Larsen", "Moreau", "Novak", "Olsen", "Petrov", "Rossi", "Schmidt",
];
const CITIES: &[&str] = &[
    "Aarhus", "Bergen", "Graz", "Leiden", "Lyon", "Porto", "Turku", "Uppsala",
];

/// (LOINC code, display, unit, low, high)
const VITALS: &[(&str, &str, &str, f64, f64)] = &[
    ("8867-4", "Heart rate", "/min", 52.0, 110.0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100.0, 165.0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60.0, 100.0),
    ("8310-5", "Body temperature", "Cel", 36.0, 38.6),
    ("29463-7", "Body weight", "kg", 48.0, 120.0),
    ("9279-1", "Respiratory rate", "/min", 10.0, 24.0),
];
const LABS: &[(&str, &str, &str, f64, f64)] = &[
    (
        "2339-0",
        "Glucose [Mass/volume] in Blood",
        "mg/dL",
        70.0,
        180.0,
    ),
    (
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        10.5,
        17.5,
    ),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        0.5,
        1.6,
    ),
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        4.8,
        9.5,
    ),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "mg/dL",
        140.0,
        280.0,
    ),
];
/// (SNOMED CT code, display)
const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("40055000", "Chronic sinusitis"),
    ("233604007", "Pneumonia"),
];
/// (RxNorm code, display)
const MEDICATIONS: &[(&str, &str)] = &[
    ("860975", "metformin hydrochloride 500 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("617312", "atorvastatin 10 MG Oral Tablet"),
];
/// (CVX code, display)
const VACCINES: &[(&str, &str)] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("208", "SARS-COV-2 (COVID-19) vaccine, mRNA"),
    ("115", "Tdap"),
];
const ALLERGIES: &[(&str, &str)] = &[
    ("91936005", "Allergy to penicillin"),
    ("300913006", "Shellfish allergy"),
    ("419474003", "Allergy to mold"),
];
const PROCEDURES: &[(&str, &str)] = &[
    ("80146002", "Appendectomy"),
    ("73761001", "Colonoscopy"),
    ("386638009", "Skin biopsy"),
];

/// A seeded source of synthetic patients.
pub struct Generator {
    rng: StdRng,
}

/// One synthetic patient: the Patient resource and its clinical records, each referencing
/// `Patient/{id}`.
pub struct SyntheticPatient {
    pub id: String,
    pub patient: Value,
    pub records: Vec<Value>,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn date(&mut self, from_year: u32, to_year: u32) -> String {
        format!(
            "{}-{:02}-{:02}",
            self.rng.random_range(from_year..=to_year),
            self.rng.random_range(1..=12u32),
            self.rng.random_range(1..=28u32)
        )
    }

    fn date_time(&mut self) -> String {
        format!(
            "{}T{:02}:{:02}:00Z",
            self.date(2019, 2026),
            self.rng.random_range(7..19u32),
            self.rng.random_range(0..60u32)
        )
    }

    /// A Patient resource with a random name. `id` is the pseudonymous Patient id.
    pub fn patient_resource(&mut self, id: &str) -> Value {
        let given = self.pick(GIVEN).to_string();
        let family = self.pick(FAMILY).to_string();
        self.patient_named(id, &given, &family)
    }

    /// A Patient resource with the given name (the PHI tests plant unique names this way).
    pub fn patient_named(&mut self, id: &str, given: &str, family: &str) -> Value {
        let gender = *self.pick(&["female", "male"]);
        let birth = self.date(1935, 2020);
        let city = self.pick(CITIES).to_string();
        let mrn = format!("MRN-{:08}", self.rng.random_range(0..100_000_000u32));
        json!({
            "resourceType": "Patient",
            "id": id,
            "identifier": [{"system": "urn:ehrchain:demo:mrn", "value": mrn}],
            "active": true,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": gender,
            "birthDate": birth,
            "address": [{"city": city, "country": "EU"}]
        })
    }

    /// A full synthetic patient with `records` clinical resources of mixed types.
    pub fn patient(&mut self, id: &str, records: usize) -> SyntheticPatient {
        let patient = self.patient_resource(id);
        let records = (0..records).map(|i| self.record(id, i)).collect();
        SyntheticPatient {
            id: id.to_owned(),
            patient,
            records,
        }
    }

    /// The `index`-th clinical record of a patient; the type cycles through every supported
    /// clinical type, weighted toward observations as real charts are.
    pub fn record(&mut self, patient: &str, index: usize) -> Value {
        match index % 13 {
            0 => self.encounter(patient),
            1..=3 => self.vital_sign(patient),
            4..=5 => self.laboratory(patient),
            6 => self.condition(patient),
            7 => self.medication_request(patient),
            8 => self.immunization(patient),
            9 => self.allergy(patient),
            10 => self.procedure(patient),
            11 => self.diagnostic_report(patient),
            _ => self.document(patient, 600),
        }
    }

    fn subject(patient: &str) -> Value {
        json!({"reference": format!("Patient/{patient}")})
    }

    fn observation(
        &mut self,
        patient: &str,
        category: &str,
        entry: (&str, &str, &str, f64, f64),
    ) -> Value {
        let (code, display, unit, low, high) = entry;
        let value = (self.rng.random_range(low..high) * 10.0).round() / 10.0;
        json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
            "subject": Self::subject(patient),
            "effectiveDateTime": self.date_time(),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        })
    }

    pub fn vital_sign(&mut self, patient: &str) -> Value {
        let entry = *self.pick(VITALS);
        self.observation(patient, "vital-signs", entry)
    }

    pub fn laboratory(&mut self, patient: &str) -> Value {
        let entry = *self.pick(LABS);
        self.observation(patient, "laboratory", entry)
    }

    pub fn encounter(&mut self, patient: &str) -> Value {
        let start = self.date_time();
        let (code, display) = *self.pick(&[
            ("AMB", "ambulatory"),
            ("EMER", "emergency"),
            ("IMP", "inpatient encounter"),
        ]);
        json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display},
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up"}]}],
            "subject": Self::subject(patient),
            "period": {"start": start}
        })
    }

    pub fn condition(&mut self, patient: &str) -> Value {
        let (code, display) = *self.pick(CONDITIONS);
        json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}], "text": display},
            "subject": Self::subject(patient),
            "onsetDateTime": self.date_time()
        })
    }

    pub fn medication_request(&mut self, patient: &str) -> Value {
        let (code, display) = *self.pick(MEDICATIONS);
        json!({
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code, "display": display}], "text": display},
            "subject": Self::subject(patient),
            "authoredOn": self.date(2019, 2026),
            "dosageInstruction": [{"text": "1 tablet once daily"}]
        })
    }

    pub fn immunization(&mut self, patient: &str) -> Value {
        let (code, display) = *self.pick(VACCINES);
        json!({
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": code, "display": display}]},
            "patient": Self::subject(patient),
            "occurrenceDateTime": self.date_time()
        })
    }

    pub fn allergy(&mut self, patient: &str) -> Value {
        let (code, display) = *self.pick(ALLERGIES);
        json!({
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
            "patient": Self::subject(patient),
            "recordedDate": self.date(2010, 2026)
        })
    }

    pub fn procedure(&mut self, patient: &str) -> Value {
        let (code, display) = *self.pick(PROCEDURES);
        json!({
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                "subject": Self::subject(patient),
                "performedDateTime": self.date_time()
        })
    }

    pub fn diagnostic_report(&mut self, patient: &str) -> Value {
        json!({
                "resourceType": "DiagnosticReport",
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel - Blood by Automated count"}]},
                "subject": Self::subject(patient),
                "effectiveDateTime": self.date_time(),
                "conclusion": "Within normal limits."
        })
    }

    /// A clinical note as a DocumentReference whose attachment carries about `note_bytes` of
    /// text (base64), for document-sized records and the throughput benchmarks.
    pub fn document(&mut self, patient: &str, note_bytes: usize) -> Value {
        const WORDS: &[&str] = &[
            "patient",
            "reports",
            "mild",
            "pain",
            "no",
            "fever",
            "follow-up",
            "in",
            "two",
            "weeks",
            "blood",
            "pressure",
            "stable",
            "continue",
            "current",
            "medication",
        ];
        let mut note = String::with_capacity(note_bytes + 16);
        while note.len() < note_bytes {
            let word: &str = WORDS[self.rng.random_range(0..WORDS.len())];
            note.push_str(word);
            note.push(' ');
        }
        note.truncate(note_bytes);
        json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note"}]}],
            "subject": Self::subject(patient),
            "date": self.date_time(),
            "content": [{"attachment": {"contentType": "text/plain", "data": base64(note.as_bytes())}}]
        })
    }

    /// A Binary holding `size` bytes of opaque content (a scanned document, say).
    pub fn binary(&mut self, patient: &str, size: usize) -> Value {
        let bytes: Vec<u8> = (0..size)
            .map(|_| self.rng.random_range(0..=255u8))
            .collect();
        json!({
            "resourceType": "Binary",
            "contentType": "application/pdf",
            "securityContext": Self::subject(patient),
            "data": base64(&bytes)
        })
    }
}

/// Standard base64 with padding, as FHIR's base64Binary requires.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehrchain_fhir::{ResourceType, validate};

    #[test]
    fn same_seed_same_patients_and_all_valid() {
        let a = Generator::new(7).patient("p1", 24);
        let b = Generator::new(7).patient("p1", 24);
        assert_eq!(a.patient, b.patient);
        assert_eq!(a.records, b.records);
        assert_ne!(Generator::new(8).patient("p1", 24).records, a.records);
        let mut seen = std::collections::BTreeSet::new();
        for value in std::iter::once(a.patient).chain(a.records) {
            let bytes = serde_json::to_vec(&value).unwrap();
            let resource = validate(&bytes).expect("synthetic records are valid");
            assert_eq!(resource.patient.as_deref(), Some("p1"));
            seen.insert(resource.resource_type);
        }
        assert!(seen.len() >= 10, "{seen:?}");
        let mut generator = Generator::new(1);
        let binary = validate(&serde_json::to_vec(&generator.binary("p1", 1000)).unwrap()).unwrap();
        assert_eq!(binary.resource_type, ResourceType::Binary);
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
