// FHIR R4 resources as a person reads them: a title, the facts that matter, and a date.
// No FHIR UI library fits a page with no build step and no framework (see DEPENDENCIES.md),
// so this covers the types ehrchain stores, and anything else by its type and id.
export const text = (concept) => {
  if (!concept) return '';
  if (Array.isArray(concept)) return concept.map(text).filter(Boolean).join(', ');
  if (concept.text) return concept.text;
  const coding = (concept.coding || [])[0] || concept;
  return coding.display || coding.code || '';
};

const quantity = (q) => (q && q.value !== undefined ? `${q.value}${q.unit ? ` ${q.unit}` : ''}` : '');

const range = (r) => {
  if (!r) return '';
  const low = quantity(r.low);
  const high = quantity(r.high);
  if (low && high) return `${low} – ${high}`;
  return low ? `≥ ${low}` : high ? `≤ ${high}` : (r.text || '');
};

const value = (o) => quantity(o.valueQuantity) || text(o.valueCodeableConcept) || o.valueString
  || (o.valueBoolean !== undefined ? String(o.valueBoolean) : '') || (o.valueInteger ?? '').toString()
  || (o.valueDateTime || '');

const period = (p) => (p ? [p.start, p.end].filter(Boolean).map(day).join(' – ') : '');

export const day = (when) => (when ? String(when).slice(0, 10) : '');

// The date a resource is about, for the timeline.
export function dateOf(r) {
  return r.effectiveDateTime || (r.effectivePeriod || {}).start || r.onsetDateTime || r.recordedDate
    || r.authoredOn || r.occurrenceDateTime || r.performedDateTime || (r.performedPeriod || {}).start
    || (r.period || {}).start || r.issued || r.date || r.birthDate || (r.meta || {}).lastUpdated || '';
}

// {title, facts: [[label, value]]}
export function describe(r) {
  const facts = [];
  const add = (label, v) => { if (v) facts.push([label, v]); };
  switch (r.resourceType) {
    case 'Observation':
      add('Value', value(r));
      (r.component || []).forEach((c) => add(text(c.code), value(c)));
      add('Reference range', range((r.referenceRange || [])[0]));
      add('Interpretation', text(r.interpretation));
      add('Status', r.status);
      return { title: text(r.code) || 'Observation', facts };
    case 'Condition':
      add('Clinical status', text(r.clinicalStatus));
      add('Verification', text(r.verificationStatus));
      add('Since', day(r.onsetDateTime) || period(r.onsetPeriod));
      add('Severity', text(r.severity));
      return { title: text(r.code) || 'Condition', facts };
    case 'MedicationRequest':
    case 'MedicationStatement': {
      const dosage = (r.dosageInstruction || r.dosage || [])[0] || {};
      const dose = ((dosage.doseAndRate || [])[0] || {}).doseQuantity;
      add('Dose', dosage.text || quantity(dose));
      add('Status', r.status);
      add('Reason', text(r.reasonCode));
      return { title: text(r.medicationCodeableConcept) || 'Medication', facts };
    }
    case 'AllergyIntolerance':
      add('Criticality', r.criticality);
      add('Reaction', (r.reaction || []).map((x) => text(x.manifestation)).join('; '));
      add('Clinical status', text(r.clinicalStatus));
      return { title: `Allergy: ${text(r.code) || 'unspecified'}`, facts };
    case 'Immunization':
      add('Status', r.status);
      add('Lot', r.lotNumber);
      return { title: `Vaccine: ${text(r.vaccineCode)}`, facts };
    case 'Procedure':
      add('Status', r.status);
      add('Reason', text(r.reasonCode));
      return { title: text(r.code) || 'Procedure', facts };
    case 'Encounter':
      add('Class', (r.class || {}).display || (r.class || {}).code);
      add('When', period(r.period));
      add('Reason', text(r.reasonCode));
      return { title: text(r.type) || 'Encounter', facts };
    case 'DiagnosticReport':
      add('Conclusion', r.conclusion);
      add('Status', r.status);
      return { title: text(r.code) || 'Report', facts };
    case 'DocumentReference':
      add('Description', r.description);
      add('Status', r.status);
      return { title: text(r.type) || 'Document', facts };
    case 'CarePlan':
      add('Status', r.status);
      add('Description', r.description);
      return { title: r.title || text(r.category) || 'Care plan', facts };
    case 'Patient': {
      const name = (r.name || [])[0] || {};
      add('Born', r.birthDate);
      add('Gender', r.gender);
      return { title: name.text || [...(name.given || []), name.family].filter(Boolean).join(' ') || 'Patient', facts };
    }
    default:
      add('Status', r.status);
      return { title: `${r.resourceType} ${r.id || ''}`, facts };
  }
}
