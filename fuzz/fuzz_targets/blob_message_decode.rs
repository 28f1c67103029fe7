//! Untrusted peer messages on the blob channel: decoding never panics and respects limits.
#![no_main]
use ehrchain_chain::records::{FETCH_ITEMS_MAX, Message, decode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_message(data) {
        Some(Message::Request(items)) => assert!(items.len() <= FETCH_ITEMS_MAX),
        Some(Message::Response(items)) => assert!(items.len() <= FETCH_ITEMS_MAX),
        Some(Message::KeyRequest(items)) => assert!(items.len() <= FETCH_ITEMS_MAX),
        Some(Message::KeyResponse(items)) => assert!(items.len() <= FETCH_ITEMS_MAX),
        None => {}
    }
});
