use std::os::unix::fs::MetadataExt;

use super::*;

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, length: usize) -> Vec<u8> {
    (0..length)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn disk_bytes(directory: &Path) -> u64 {
    fs::metadata(directory.join(DATA_FILE)).unwrap().blocks() * 512
}

fn read_map(directory: &Path) -> BlockMap {
    BlockMap::decode(&fs::read(directory.join(MAP_FILE)).unwrap()).unwrap()
}

#[test]
fn written_data_reads_back_and_unwritten_reads_zero() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::create(&root.path().join("vol"), 8 * MIB).unwrap();
    let data = pattern(7, 100_000);
    store.write_at(MIB - 3, &data, false).unwrap();
    let mut back = vec![0u8; data.len()];
    store.read_at(MIB - 3, &mut back).unwrap();
    assert_eq!(back, data);
    let mut untouched = vec![1u8; 4096];
    store.read_at(4 * MIB, &mut untouched).unwrap();
    assert!(untouched.iter().all(|&b| b == 0));
}

#[test]
fn only_written_blocks_use_space_and_trim_frees_it() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    let store = BlockStore::create(&directory, 64 * MIB).unwrap();
    assert!(
        disk_bytes(&directory) < 64 * 1024,
        "new volume should be sparse"
    );
    store
        .write_at(0, &pattern(1, 2 * MIB as usize), false)
        .unwrap();
    store.flush().unwrap();
    assert!(disk_bytes(&directory) >= 2 * MIB);
    assert_eq!(store.allocated_bytes(), 2 * MIB);
    store.trim(0, 2 * MIB, true).unwrap();
    assert!(
        disk_bytes(&directory) < 64 * 1024,
        "trim should punch holes"
    );
    assert_eq!(store.allocated_bytes(), 0);
    let mut back = vec![9u8; 4096];
    store.read_at(MIB, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn partial_trim_zeroes_but_keeps_the_block_allocated() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::create(&root.path().join("vol"), 4 * MIB).unwrap();
    store
        .write_at(0, &pattern(3, BLOCK_SIZE as usize), false)
        .unwrap();
    store.trim(4096, 8192, false).unwrap();
    let mut back = vec![0u8; BLOCK_SIZE as usize];
    store.read_at(0, &mut back).unwrap();
    let expected = pattern(3, BLOCK_SIZE as usize);
    assert_eq!(back[..4096], expected[..4096]);
    assert!(back[4096..12288].iter().all(|&b| b == 0));
    assert_eq!(back[12288..], expected[12288..]);
    assert_eq!(store.allocated_bytes(), BLOCK_SIZE);
}

#[test]
fn write_zeroes_without_deallocation_keeps_space() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    let store = BlockStore::create(&directory, 4 * MIB).unwrap();
    store.write_at(0, &pattern(5, MIB as usize), false).unwrap();
    store.write_zeroes(0, MIB, true, false).unwrap();
    let mut back = vec![1u8; MIB as usize];
    store.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(store.allocated_bytes(), MIB);
    store.write_zeroes(0, MIB, true, true).unwrap();
    assert_eq!(store.allocated_bytes(), 0);
}

#[test]
fn block_status_reports_allocated_runs() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::create(&root.path().join("vol"), 4 * MIB).unwrap();
    store.write_at(BLOCK_SIZE + 10, b"x", false).unwrap();
    let extents = store.block_status(0, 4 * MIB).unwrap();
    assert_eq!(
        extents,
        vec![
            Extent {
                length: BLOCK_SIZE,
                is_hole: true
            },
            Extent {
                length: BLOCK_SIZE,
                is_hole: false
            },
            Extent {
                length: 4 * MIB - 2 * BLOCK_SIZE,
                is_hole: true
            },
        ]
    );
    let inner = store.block_status(BLOCK_SIZE + 100, 1000).unwrap();
    assert_eq!(
        inner,
        vec![Extent {
            length: 1000,
            is_hole: false
        }]
    );
}

#[test]
fn out_of_range_requests_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = BlockStore::create(&root.path().join("vol"), MIB).unwrap();
    let mut buffer = [0u8; 512];
    assert!(matches!(
        store.read_at(MIB - 511, &mut buffer),
        Err(EngineError::OutOfRange { .. })
    ));
    assert!(matches!(
        store.write_at(u64::MAX - 10, &buffer, false),
        Err(EngineError::OutOfRange { .. })
    ));
    assert!(store.trim(MIB, 1, false).is_err());
    assert!(store.trim(MIB, 0, false).is_ok());
    assert_eq!(
        EngineError::OutOfRange {
            offset: 0,
            length: 0,
            size: 0
        }
        .errno(),
        libc::EINVAL
    );
}

#[test]
fn flushed_map_survives_a_crash_and_clean_close_is_recorded() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    let store = BlockStore::create(&directory, 4 * MIB).unwrap();
    store.write_at(3 * BLOCK_SIZE, b"durable", false).unwrap();
    store.flush().unwrap();
    let persisted = read_map(&directory);
    assert!(persisted.allocated.get(3));
    assert!(persisted.changed.get(3));
    assert!(
        !persisted.clean_shutdown,
        "an open volume is marked unclean on disk"
    );
    drop(store); // a crash: no close()
    let reopened = BlockStore::open(&directory).unwrap();
    let mut back = [0u8; 7];
    reopened.read_at(3 * BLOCK_SIZE, &mut back).unwrap();
    assert_eq!(&back, b"durable");
    reopened.close().unwrap();
    assert!(read_map(&directory).clean_shutdown);
}

#[test]
fn unflushed_writes_are_found_again_after_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    let store = BlockStore::create(&directory, 4 * MIB).unwrap();
    store.write_at(5 * BLOCK_SIZE + 1, b"late", false).unwrap();
    assert!(!read_map(&directory).allocated.get(5), "not yet persisted");
    drop(store);
    let reopened = BlockStore::open(&directory).unwrap();
    let map = read_map(&directory);
    assert!(
        map.allocated.get(5) && map.changed.get(5),
        "reconciled from the data file"
    );
    assert!(!map.allocated.get(4));
    assert!(!reopened.block_status(5 * BLOCK_SIZE, BLOCK_SIZE).unwrap()[0].is_hole);
}

#[test]
fn grow_extends_and_survives_reopen() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    let store = BlockStore::create(&directory, MIB).unwrap();
    assert!(matches!(
        store.grow(MIB / 2),
        Err(EngineError::ShrinkRefused { .. })
    ));
    store.grow(3 * MIB).unwrap();
    store.write_at(3 * MIB - 4, b"tail", true).unwrap();
    store.close().unwrap();
    let reopened = BlockStore::open(&directory).unwrap();
    assert_eq!(reopened.size(), 3 * MIB);
    let mut back = [0u8; 4];
    reopened.read_at(3 * MIB - 4, &mut back).unwrap();
    assert_eq!(&back, b"tail");
}

#[test]
fn corrupt_map_is_reported_not_ignored() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    BlockStore::create(&directory, MIB)
        .unwrap()
        .close()
        .unwrap();
    let map_path = directory.join(MAP_FILE);
    let mut bytes = fs::read(&map_path).unwrap();
    bytes[30] ^= 1;
    fs::write(&map_path, bytes).unwrap();
    assert!(matches!(
        BlockStore::open(&directory),
        Err(EngineError::CorruptMetadata(_))
    ));
}

#[test]
fn destroy_removes_the_volume() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("vol");
    BlockStore::create(&directory, MIB)
        .unwrap()
        .close()
        .unwrap();
    BlockStore::destroy(&directory).unwrap();
    assert!(!directory.exists());
    BlockStore::destroy(&directory).unwrap();
}
