//! The configuration example in docs/imds.md must stay a valid config.

mod common;

use common::repo_root;

#[test]
fn documented_config_example_parses_and_validates() {
    let docs = std::fs::read_to_string(repo_root().join("docs/imds.md")).expect("docs/imds.md");
    let example = docs
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```json block in docs/imds.md");
    let config = imds::HostConfig::parse(example, false).expect("documented config parses");
    config.validate().expect("documented config validates");
    let instance = &config.instances[0];
    assert_eq!(instance.placement.region(), "eu-west-1");
    assert!(imds::InstanceMetadata::build(instance, None).is_ok());
}
