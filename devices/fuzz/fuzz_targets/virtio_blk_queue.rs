//! The guest controls a virtio-blk queue completely: descriptor table,
//! available ring and every buffer. Walk whatever it wrote and serve each
//! chain; nothing may panic, hang or touch memory outside the guest's.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::virtio::block::fuzz_queue(data);
});
