use super::*;
use crate::engine::BLOCK_SIZE;

fn filled(byte: u8) -> Vec<u8> {
    vec![byte; BLOCK_SIZE as usize]
}

#[test]
fn incremental_uploads_only_changed_blocks_and_dedups() {
    let root = tempfile::tempdir().unwrap();
    let storage = SnapshotStorage::open(root.path().join("objects").to_str().unwrap()).unwrap();
    let store = BlockStore::create(&root.path().join("vol"), 8 * BLOCK_SIZE).unwrap();
    store.write_at(0, &filled(1), false).unwrap();
    store.write_at(3 * BLOCK_SIZE, &filled(1), false).unwrap();
    store.write_at(5 * BLOCK_SIZE, &filled(5), false).unwrap();
    let session = store.begin_capture().unwrap();
    let first = upload_capture(&storage, &store, &BTreeMap::new(), &session, |_, _| {}).unwrap();
    store.end_capture(true).unwrap();
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), vec![0, 3, 5]);
    assert_eq!(first[&0], first[&3], "identical blocks share one object");
    assert_eq!(storage.list("blocks").unwrap().len(), 2);

    store.write_at(5 * BLOCK_SIZE, b"changed", false).unwrap();
    store.trim(0, BLOCK_SIZE, false).unwrap();
    let session = store.begin_capture().unwrap();
    assert_eq!(session.changed_blocks, vec![0, 5]);
    let mut calls = 0;
    let second = upload_capture(&storage, &store, &first, &session, |_, _| calls += 1).unwrap();
    store.end_capture(true).unwrap();
    assert_eq!(calls, 2);
    assert_eq!(
        second.keys().copied().collect::<Vec<_>>(),
        vec![3, 5],
        "the trimmed block left the list"
    );
    assert_eq!(second[&3], first[&3]);
    assert_ne!(second[&5], first[&5]);
    assert_eq!(storage.list("blocks").unwrap().len(), 3);
}

#[test]
fn garbage_collection_keeps_blocks_still_referenced() {
    let root = tempfile::tempdir().unwrap();
    let storage = SnapshotStorage::open(root.path().join("objects").to_str().unwrap()).unwrap();
    let shared = storage.put_block(&filled(1)).unwrap();
    let only_deleted = storage.put_block(&filled(2)).unwrap();
    let only_root = storage.put_block(&filled(3)).unwrap();
    let manifest = |id: &str, blocks: BTreeMap<u64, String>| Manifest {
        format_version: 1,
        snapshot_id: id.into(),
        volume_size: 1,
        block_size: BLOCK_SIZE,
        parent_snapshot_id: None,
        encrypted: false,
        wrapped_data_key: None,
        kms_key_id: None,
        blocks,
    };
    storage
        .put_manifest(&manifest("snap-1", BTreeMap::from([(0, shared.clone())])))
        .unwrap();
    let deleted = storage
        .collect_garbage(&[BTreeMap::from([(7, only_root.clone())])])
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(storage.get_block(&shared).is_ok());
    assert!(storage.get_block(&only_root).is_ok());
    assert!(storage.get_block(&only_deleted).is_err());
}

#[test]
fn corrupt_blocks_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let objects = root.path().join("objects");
    let storage = SnapshotStorage::open(objects.to_str().unwrap()).unwrap();
    let hash = storage.put_block(&filled(9)).unwrap();
    std::fs::write(objects.join("blocks").join(&hash), filled(8)).unwrap();
    let error = storage.get_block(&hash).unwrap_err().to_string();
    assert!(error.contains("does not match"), "{error}");
    let source = ManifestSource::new(Arc::new(storage), BTreeMap::from([(0, hash)]));
    assert!(source.fetch_block(0).is_err());
    assert_eq!(source.fetch_block(1).unwrap(), None);
}
