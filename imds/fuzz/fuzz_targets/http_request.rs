//! Arbitrary bytes as a (pipelined) request stream: the parser must never panic, always
//! make progress or ask for more, and every parsed request must be answerable.
#![no_main]

use std::sync::OnceLock;

use imds::http::{parse_request, Parsed, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use imds::{Handler, InstanceMetadata};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn fixture() -> &'static (Handler, InstanceMetadata) {
    static FIXTURE: OnceLock<(Handler, InstanceMetadata)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let metadata = InstanceMetadata::build(&common::record(), None).expect("builds");
        (Handler::with_random_secrets().expect("secrets"), metadata)
    })
}

fuzz_target!(|data: &[u8]| {
    let (handler, metadata) = fixture();
    let mut rest = data;
    while !rest.is_empty() {
        match parse_request(rest) {
            Ok(Parsed::Complete { request, consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                assert!(request
                    .headers
                    .iter()
                    .all(|(name, _)| !name.bytes().any(|b| b.is_ascii_uppercase())));
                let response = handler.handle(metadata, &request, 1_800_000_000);
                let mut out = Vec::new();
                response.write_to(request.keep_alive, "date", &mut out);
                assert!(out.starts_with(b"HTTP/1.1 "));
                rest = &rest[consumed..];
            }
            Ok(Parsed::Partial) => {
                // Asking for more is only allowed while the request could still fit.
                let blank_lines = rest
                    .iter()
                    .take_while(|b| **b == b'\r' || **b == b'\n')
                    .count();
                assert!(rest.len() - blank_lines <= MAX_HEAD_BYTES + MAX_BODY_BYTES);
                break;
            }
            Err(_) => break,
        }
    }
});
