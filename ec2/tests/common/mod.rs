//! Helpers shared by the ec2 crate's integration tests.

use integration_tests::repo_root;

/// A file of the default AMI (`.cache/ami/NAME`, built by scripts/default-ami.sh).
pub fn ami_file(name: &str) -> String {
    let path = repo_root().join(".cache/ami").join(name);
    assert!(
        path.is_file(),
        "{} missing: run scripts/default-ami.sh (scripts/setup/vmm.sh does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}
