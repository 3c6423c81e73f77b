use std::sync::Arc;

use super::*;
use crate::crypto::{SectorCipher, DATA_KEY_LEN};

fn encrypted_store(directory: &Path, size: u64) -> BlockStore {
    let store = BlockStore::create(directory, size).unwrap();
    store.set_cipher(Some(Arc::new(SectorCipher::new(&[7u8; DATA_KEY_LEN]))));
    store
}

fn raw_file(directory: &Path) -> Vec<u8> {
    fs::read(directory.join(DATA_FILE)).unwrap()
}

#[test]
fn unaligned_writes_round_trip_and_nothing_is_stored_in_plaintext() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("v");
    let store = encrypted_store(&directory, 4 * BLOCK_SIZE);
    let secret = b"attack at dawn, attack at dawn, attack at dawn!".repeat(50);
    store.write_at(1000, &secret, false).unwrap();
    store.write_at(1003, b"XYZ", false).unwrap();
    let mut back = vec![0u8; secret.len()];
    store.read_at(1000, &mut back).unwrap();
    let mut expected = secret.clone();
    expected[3..6].copy_from_slice(b"XYZ");
    assert_eq!(back, expected);
    let raw = raw_file(&directory);
    assert!(
        !raw.windows(14).any(|window| window == b"attack at dawn"),
        "plaintext reached the disk"
    );
    let mut untouched = vec![1u8; 512];
    store.read_at(3 * BLOCK_SIZE, &mut untouched).unwrap();
    assert!(untouched.iter().all(|&b| b == 0), "holes read as zeros");
}

#[test]
fn partial_sector_trim_and_zeroes_keep_neighbouring_bytes() {
    let root = tempfile::tempdir().unwrap();
    let store = encrypted_store(&root.path().join("v"), 4 * BLOCK_SIZE);
    let data = vec![0x5au8; 4096];
    store.write_at(0, &data, false).unwrap();
    store.trim(100, 1000, false).unwrap();
    store.write_zeroes(2000, 10, false, false).unwrap();
    let mut back = vec![0u8; 4096];
    store.read_at(0, &mut back).unwrap();
    let mut expected = data.clone();
    expected[100..1100].fill(0);
    expected[2000..2010].fill(0);
    assert_eq!(back, expected);
}

#[test]
fn encrypted_data_survives_reopen_with_the_same_key_only() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("v");
    let store = encrypted_store(&directory, BLOCK_SIZE);
    store.write_at(512, b"persisted", true).unwrap();
    store.close().unwrap();
    let reopened = BlockStore::open(&directory).unwrap();
    reopened.set_cipher(Some(Arc::new(SectorCipher::new(&[7u8; DATA_KEY_LEN]))));
    let mut back = [0u8; 9];
    reopened.read_at(512, &mut back).unwrap();
    assert_eq!(&back, b"persisted");
    reopened.set_cipher(Some(Arc::new(SectorCipher::new(&[8u8; DATA_KEY_LEN]))));
    reopened.read_at(512, &mut back).unwrap();
    assert_ne!(&back, b"persisted", "another key must not decrypt the data");
}
