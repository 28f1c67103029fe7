//! The node's search index: the search fields (codes, categories, identifiers, the clinical
//! date) of each record version this node has opened, by envelope hash.
//!
//! A search with content parameters (`code`, `category`, `identifier`, `date`) filters its
//! candidates here instead of opening and logging every one: a version not indexed yet is
//! opened once with a key this node holds (its institution's, a custodial patient's, or the
//! searcher's), which discloses nothing to anyone, and only the hits the searcher may read are
//! disclosed and logged on the trail. The index is not per reader: what it says about a
//! version is the version's content, and every answer is cut to what the consent contract
//! lets the searcher read at that moment, so a grant or a revocation takes effect at the next
//! search without touching the index.
//!
//! It lives in memory, bounded by [`SEARCH_INDEX_ENTRIES_MAX`] (the oldest entries go first),
//! and is rebuilt on demand after a restart. Entries of an erased patient are dropped by
//! [`SearchIndex::retain_patients`], which the node runs after every block.

use ehrchain_types::PatientId;
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

/// Most record versions indexed at once (about 200 bytes each: 100 MB at the bound).
pub const SEARCH_INDEX_ENTRIES_MAX: usize = 500_000;

/// The search fields of one record version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    codes: Vec<String>,
    categories: Vec<String>,
    identifiers: Vec<String>,
    date: Option<String>,
}

impl Fields {
    /// No fields: matches no content filter (a stored version that no longer parses).
    pub fn none() -> Self {
        Self {
            codes: Vec::new(),
            categories: Vec::new(),
            identifiers: Vec::new(),
            date: None,
        }
    }

    pub fn of(resource: &ehrchain_fhir::Resource) -> Self {
        Self {
            codes: resource.codes.clone(),
            categories: resource.categories.clone(),
            identifiers: resource.identifiers.clone(),
            date: resource.date.clone(),
        }
    }

    /// The clinical date, as written (ISO 8601 text, so it sorts as text within a precision).
    pub fn date(&self) -> Option<&str> {
        self.date.as_deref()
    }

    /// Does this version match every content filter (`(name, value)`, names among `code`,
    /// `category`, `identifier` and `date`)?
    pub fn matches(&self, filters: &[(&str, &str)]) -> bool {
        filters.iter().all(|(name, value)| match *name {
            "code" => super::params::token_matches(value, &self.codes),
            "identifier" => super::params::token_matches(value, &self.identifiers),
            "category" => super::params::token_matches(value, &self.categories),
            _ => super::params::date_matches(value, self.date.as_deref()),
        })
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<[u8; 32], (PatientId, Arc<Fields>)>,
    /// Insertion order, for eviction at the bound.
    order: VecDeque<[u8; 32]>,
}

/// The index (see the module's documentation).
#[derive(Default)]
pub struct SearchIndex {
    inner: Mutex<Inner>,
}

impl SearchIndex {
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<Fields>> {
        let inner = self.inner.lock().expect("search index lock");
        inner.entries.get(hash).map(|(_, fields)| fields.clone())
    }

    pub fn insert(&self, hash: [u8; 32], patient: PatientId, fields: Arc<Fields>) {
        let mut inner = self.inner.lock().expect("search index lock");
        if inner.entries.insert(hash, (patient, fields)).is_some() {
            return;
        }
        inner.order.push_back(hash);
        while inner.entries.len() > SEARCH_INDEX_ENTRIES_MAX {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
    }

    /// Keep only the entries of patients for whom `keep` holds (drop the erased).
    pub fn retain_patients(&self, keep: impl Fn(&PatientId) -> bool) {
        let mut inner = self.inner.lock().expect("search index lock");
        let before = inner.entries.len();
        inner.entries.retain(|_, (patient, _)| keep(patient));
        if inner.entries.len() != before {
            let Inner { entries, order } = &mut *inner;
            order.retain(|hash| entries.contains_key(hash));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("search index lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drop the entries of patients erased on chain (the node runs it after blocks).
pub fn drop_erased<B: commonware_runtime::Blob>(state: &crate::ApiState<B>) {
    let erased: std::collections::BTreeSet<PatientId> = state.chain.read(|s| {
        s.patients()
            .filter(|(_, p)| p.erased_height.is_some())
            .map(|(id, _)| *id)
            .collect()
    });
    if !erased.is_empty() {
        state
            .gateway
            .search_index
            .retain_patients(|p| !erased.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(code: &str) -> Arc<Fields> {
        Arc::new(Fields {
            codes: vec![code.to_string()],
            categories: Vec::new(),
            identifiers: Vec::new(),
            date: Some("2024-05-01".to_string()),
        })
    }

    #[test]
    fn entries_match_filters_and_erased_patients_leave() {
        let index = SearchIndex::default();
        index.insert([1; 32], [1; 16], fields("http://loinc.org|8867-4"));
        index.insert([2; 32], [2; 16], fields("http://loinc.org|2339-0"));
        let heart = index.get(&[1; 32]).unwrap();
        assert!(heart.matches(&[("code", "http://loinc.org|8867-4")]));
        assert!(heart.matches(&[("code", "8867-4"), ("date", "ge2024")]));
        assert!(!heart.matches(&[("code", "2339-0")]));
        assert!(!heart.matches(&[("date", "lt2024")]));
        index.retain_patients(|p| *p != [2; 16]);
        assert_eq!(index.len(), 1);
        assert!(index.get(&[2; 32]).is_none());
    }
}
