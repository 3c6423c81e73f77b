use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

struct MemorySource {
    blocks: HashMap<u64, Vec<u8>>,
    fetches: AtomicU64,
}

impl BlockSource for MemorySource {
    fn fetch_block(&self, index: u64) -> Result<Option<Vec<u8>>, EngineError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(self.blocks.get(&index).cloned())
    }
}

fn filled(byte: u8) -> Vec<u8> {
    vec![byte; BLOCK_SIZE as usize]
}

fn source_with(blocks: &[(u64, u8)]) -> Arc<MemorySource> {
    Arc::new(MemorySource {
        blocks: blocks
            .iter()
            .map(|&(index, byte)| (index, filled(byte)))
            .collect(),
        fetches: AtomicU64::new(0),
    })
}

#[test]
fn blocks_are_fetched_once_on_first_read() {
    let root = tempfile::tempdir().unwrap();
    let source = source_with(&[(0, 0xaa), (2, 0xbb)]);
    let store = BlockStore::create_from_source(
        &root.path().join("v"),
        8 * BLOCK_SIZE,
        4 * BLOCK_SIZE,
        source.clone(),
    )
    .unwrap();
    assert_eq!(
        store.non_local_blocks(),
        4,
        "blocks past the snapshot's size are local zeros"
    );
    let mut buffer = vec![0u8; 100];
    store.read_at(2 * BLOCK_SIZE + 5, &mut buffer).unwrap();
    assert!(buffer.iter().all(|&b| b == 0xbb));
    store.read_at(2 * BLOCK_SIZE + 500, &mut buffer).unwrap();
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    store.read_at(6 * BLOCK_SIZE, &mut buffer).unwrap();
    assert!(buffer.iter().all(|&b| b == 0));
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
}

#[test]
fn partial_writes_hydrate_first_and_whole_block_writes_do_not_fetch() {
    let root = tempfile::tempdir().unwrap();
    let source = source_with(&[(0, 0x11), (1, 0x22)]);
    let store = BlockStore::create_from_source(
        &root.path().join("v"),
        4 * BLOCK_SIZE,
        4 * BLOCK_SIZE,
        source.clone(),
    )
    .unwrap();
    store.write_at(10, b"new", false).unwrap();
    let mut head = vec![0u8; 16];
    store.read_at(0, &mut head).unwrap();
    assert_eq!(
        &head[..13],
        &[0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, b'n', b'e', b'w']
    );
    store.write_at(BLOCK_SIZE, &filled(0x33), false).unwrap();
    assert_eq!(
        source.fetches.load(Ordering::SeqCst),
        1,
        "a whole-block write needs no fetch"
    );
    store.trim(0, BLOCK_SIZE, false).unwrap();
    store.read_at(0, &mut head).unwrap();
    assert!(
        head.iter().all(|&b| b == 0),
        "a trimmed block must not fall back to the snapshot"
    );
}

#[test]
fn background_fill_hydrates_everything_and_survives_reopen() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("v");
    let source = source_with(&[(0, 1), (1, 2), (3, 4)]);
    let store =
        BlockStore::create_from_source(&directory, 4 * BLOCK_SIZE, 4 * BLOCK_SIZE, source.clone())
            .unwrap();
    store.write_at(3 * BLOCK_SIZE, b"guest", true).unwrap();
    drop(store);
    let reopened = BlockStore::open(&directory).unwrap();
    reopened.attach_source(source.clone());
    let mut progress = Vec::new();
    reopened
        .hydrate_all(|done, total| progress.push((done, total)))
        .unwrap();
    assert_eq!(progress.last(), Some(&(3, 3)));
    assert_eq!(reopened.non_local_blocks(), 0);
    let mut block = vec![0u8; 5];
    reopened.read_at(3 * BLOCK_SIZE, &mut block).unwrap();
    assert_eq!(
        &block, b"guest",
        "hydration must not overwrite guest writes"
    );
    reopened.read_at(BLOCK_SIZE, &mut block).unwrap();
    assert_eq!(block, vec![2; 5]);
    assert_eq!(
        reopened.allocated_bytes(),
        3 * BLOCK_SIZE,
        "the empty snapshot block stays a hole"
    );
}

#[test]
fn capture_preserves_blocks_overwritten_during_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::create(&root.path().join("v"), 4 * BLOCK_SIZE).unwrap();
    store.write_at(0, &filled(0xa0), false).unwrap();
    store
        .write_at(2 * BLOCK_SIZE, &filled(0xa2), false)
        .unwrap();
    let session = store.begin_capture().unwrap();
    assert_eq!(session.changed_blocks, vec![0, 2]);
    assert!(store.begin_capture().is_err(), "one snapshot at a time");
    store.write_at(0, b"after", false).unwrap();
    store.write_at(BLOCK_SIZE, b"new block", false).unwrap();
    assert_eq!(store.read_captured_block(0).unwrap(), filled(0xa0));
    assert_eq!(store.read_captured_block(2).unwrap(), filled(0xa2));
    store.end_capture(true).unwrap();
    let next = store.begin_capture().unwrap();
    assert_eq!(
        next.changed_blocks,
        vec![0, 1],
        "only blocks written during the snapshot"
    );
    store.end_capture(false).unwrap();
    assert_eq!(
        store.begin_capture().unwrap().changed_blocks,
        vec![0, 1],
        "a failed snapshot gives its blocks back"
    );
}

#[test]
fn a_crash_during_capture_keeps_the_blocks_changed() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("v");
    let store = BlockStore::create(&directory, 4 * BLOCK_SIZE).unwrap();
    store.write_at(BLOCK_SIZE, b"x", true).unwrap();
    store.begin_capture().unwrap();
    store.flush().unwrap();
    drop(store);
    let map = BlockMap::decode(&fs::read(directory.join(MAP_FILE)).unwrap()).unwrap();
    assert!(map.changed.get(1));
}
