use super::*;
use serde_json::json;

fn inputs(free: Result<usize, String>) -> EnhancedInputs<'static> {
    EnhancedInputs {
        image_id: "ami-0123456789abcdef0",
        image_ena: true,
        image_sriov: None,
        instance_type: "t3.micro",
        type_supports: true,
        hibernation: false,
        pool: Some(Path::new("/run/vf-pool")),
        free_vfs: free,
    }
}

fn record(id: &str, state: &str, eni: EniKind) -> InstanceRecord {
    let code = match state {
        "pending" => 0,
        "running" => 16,
        "stopped" => 80,
        _ => 48,
    };
    let mut record: InstanceRecord = serde_json::from_value(json!({
        "Instance": {
            "InstanceId": id, "ImageId": "ami-0123456789abcdef0", "InstanceType": "t3.micro",
            "State": {"Code": code, "Name": state}, "LaunchTime": "2026-05-01T12:00:00.000Z",
            "AmiLaunchIndex": 0,
            "Placement": {"AvailabilityZone": "local-1a", "Tenancy": "default"},
            "PrivateIpAddress": "172.31.16.10",
            "Architecture": "x86_64", "RootDeviceName": "/dev/vda", "RootDeviceType": "ebs",
            "BlockDeviceMappings": [], "NetworkInterfaces": [],
            "MetadataOptions": {"State": "applied", "HttpTokens": "required",
                "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled",
                "HttpProtocolIpv6": "disabled", "InstanceMetadataTags": "disabled"},
            "EnaSupport": true, "HibernationOptions": {"Configured": false},
            "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 2}, "EbsOptimized": true,
            "VirtualizationType": "hvm", "PlatformDetails": "Linux/UNIX",
            "UsageOperation": "RunInstances"
        },
        "ReservationId": "r-0123456789abcdef0", "OwnerId": "111122223333"
    }))
    .expect("record");
    LaunchState {
        ip: "172.31.16.10".into(),
        mac: "02:00:ac:1f:10:0a".into(),
        eni,
        ..Default::default()
    }
    .store(&mut record);
    record
}

#[test]
fn explicit_choices() {
    let emulated = decide(InterfaceChoice::Emulated, &inputs(Ok(3))).unwrap();
    assert_eq!(emulated, EniKind::Emulated);
    let enhanced = decide(InterfaceChoice::Enhanced, &inputs(Ok(1))).unwrap();
    assert_eq!(enhanced, EniKind::Enhanced);
    let full = decide(InterfaceChoice::Enhanced, &inputs(Ok(0))).unwrap_err();
    assert_eq!(full.code, ErrorCode::InsufficientInstanceCapacity);
    assert!(full.message.contains("t3.micro"), "{}", full.message);
    let broken = decide(InterfaceChoice::Enhanced, &inputs(Err("no sysfs".into()))).unwrap_err();
    assert_eq!(broken.code, ErrorCode::InsufficientInstanceCapacity);

    let mut no_ena = inputs(Ok(1));
    no_ena.image_ena = false;
    let error = decide(InterfaceChoice::Enhanced, &no_ena).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidParameterCombination);
    no_ena.image_sriov = Some("simple");
    assert_eq!(
        decide(InterfaceChoice::Enhanced, &no_ena).unwrap(),
        EniKind::Enhanced,
        "SriovNetSupport=simple is enhanced networking too"
    );

    let mut no_pool = inputs(Ok(1));
    no_pool.pool = None;
    let error = decide(InterfaceChoice::Enhanced, &no_pool).unwrap_err();
    assert_eq!(error.code, ErrorCode::Unsupported);

    let mut wrong_type = inputs(Ok(1));
    wrong_type.type_supports = false;
    let error = decide(InterfaceChoice::Enhanced, &wrong_type).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidParameterCombination);

    let mut hibernating = inputs(Ok(1));
    hibernating.hibernation = true;
    let error = decide(InterfaceChoice::Enhanced, &hibernating).unwrap_err();
    assert_eq!(error.code, ErrorCode::UnsupportedHibernationConfiguration);
}

#[test]
fn the_launcher_falls_back_to_emulated() {
    assert_eq!(
        decide(InterfaceChoice::Auto, &inputs(Ok(2))).unwrap(),
        EniKind::Enhanced
    );
    for change in [
        |i: &mut EnhancedInputs| i.free_vfs = Ok(0),
        |i: &mut EnhancedInputs| i.free_vfs = Err("gone".into()),
        |i: &mut EnhancedInputs| i.pool = None,
        |i: &mut EnhancedInputs| i.image_ena = false,
        |i: &mut EnhancedInputs| i.type_supports = false,
        |i: &mut EnhancedInputs| i.hibernation = true,
    ] {
        let mut i = inputs(Ok(2));
        change(&mut i);
        assert_eq!(
            decide(InterfaceChoice::Auto, &i).unwrap(),
            EniKind::Emulated,
            "{i:?}"
        );
    }
}

#[test]
fn interface_types() {
    assert_eq!(InterfaceChoice::parse(None).unwrap(), InterfaceChoice::Auto);
    assert_eq!(
        InterfaceChoice::parse(Some("interface")).unwrap(),
        InterfaceChoice::Auto
    );
    assert_eq!(
        InterfaceChoice::parse(Some("enhanced")).unwrap(),
        InterfaceChoice::Enhanced
    );
    assert_eq!(
        InterfaceChoice::parse(Some("emulated")).unwrap(),
        InterfaceChoice::Emulated
    );
    assert_eq!(
        InterfaceChoice::parse(Some("ena")).unwrap_err().code,
        ErrorCode::InvalidParameterValue
    );
}

#[test]
fn vfs_promised_to_starting_instances_are_not_free() {
    let records = vec![
        // Leased already: counted by the pool, not again.
        record("i-00000000000000001", "running", EniKind::Enhanced),
        // Pending, its VMM has not leased yet: one VF promised.
        record("i-00000000000000002", "pending", EniKind::Enhanced),
        // Stopped (its VMM released the VF) and emulated ones hold nothing.
        record("i-00000000000000003", "stopped", EniKind::Enhanced),
        record("i-00000000000000004", "running", EniKind::Emulated),
    ];
    assert_eq!(count_free(2, &["i-00000000000000001"], &records), 1);
    assert_eq!(count_free(1, &["i-00000000000000001"], &records), 0);
    assert_eq!(count_free(0, &[], &records), 0, "never negative");
}

#[test]
fn pool_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path());
    // The environment wins; this test owns the variable (no other test reads it).
    std::env::remove_var(VF_POOL_ENV);
    assert_eq!(configured_pool(&paths), None);
    std::fs::write(dir.path().join("vf-pool"), "/run/vf-pool\n").unwrap();
    assert_eq!(configured_pool(&paths), Some(PathBuf::from("/run/vf-pool")));
    std::env::set_var(VF_POOL_ENV, "");
    assert_eq!(configured_pool(&paths), None, "empty: switched off");
    std::env::set_var(VF_POOL_ENV, "/tmp/other-pool");
    assert_eq!(
        configured_pool(&paths),
        Some(PathBuf::from("/tmp/other-pool"))
    );
    std::env::remove_var(VF_POOL_ENV);
}

#[test]
fn imdsd_serves_enhanced_instances_that_run() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StatePaths::new(dir.path());
    let records = vec![
        record("i-00000000000000001", "running", EniKind::Enhanced),
        record("i-00000000000000003", "stopped", EniKind::Enhanced),
        record("i-00000000000000004", "running", EniKind::Emulated),
    ];
    ImdsService::write_config(&paths, &records).unwrap();
    let text = std::fs::read_to_string(ImdsService::config_path(&paths)).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let instances = config["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{text}");
    assert_eq!(instances[0]["instance_id"], "i-00000000000000001");
    assert_eq!(instances[0]["source_addresses"], json!(["172.31.16.10"]));
}

#[test]
fn a_stopped_enhanced_instance_starts_only_with_a_free_vf() {
    let pool = std::path::Path::new("/var/lib/nitro/vf-pool");
    assert!(check_start_capacity(Ok(1), "m5.large", pool).is_ok());
    let none = check_start_capacity(Ok(0), "m5.large", pool).unwrap_err();
    assert_eq!(none.code, ErrorCode::InsufficientInstanceCapacity);
    assert!(none.message.contains("m5.large"), "{}", none.message);
    let broken = check_start_capacity(Err("pool unreadable".into()), "m5.large", pool);
    assert_eq!(
        broken.unwrap_err().code,
        ErrorCode::InsufficientInstanceCapacity
    );
}
