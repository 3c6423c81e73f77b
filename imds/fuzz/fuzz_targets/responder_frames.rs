//! Arbitrary frames into the in-VMM responder: never panic, and only claimed frames count.
#![no_main]

use std::time::{Duration, Instant};

use imds::{claims_frame, ImdsResponder, ResponderConfig};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(mut responder) = ImdsResponder::new(&common::record(), ResponderConfig::default())
    else {
        return;
    };
    let start = Instant::now();
    // Split the input into frames at a length prefix byte so one input is a sequence.
    let mut rest = data;
    let mut step = 0u64;
    while let Some((&length, tail)) = rest.split_first() {
        let length = usize::from(length).min(tail.len()).max(14.min(tail.len()));
        let (frame, next) = tail.split_at(length);
        let now = start + Duration::from_millis(step);
        assert_eq!(responder.handle_frame(frame, now), claims_frame(frame));
        while let Some(out) = responder.poll_tx(now) {
            assert!(out.len() >= 14 && out.len() <= 1514);
        }
        rest = next;
        step += 1;
    }
});
