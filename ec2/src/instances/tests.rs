use super::*;
use crate::error::ErrorCode;
use crate::images::Tag;
use crate::shorthand::from_json;
use serde_json::json;

const OWNER: &str = "111122223333";
const OTHER: &str = "444455556666";
const NOW: u64 = 1_777_638_896;

fn record(instance_id: &str, reservation: &str, owner: &str, launch_index: u32) -> InstanceRecord {
    let instance = Instance {
        instance_id: instance_id.into(),
        image_id: "ami-0123456789abcdef0".into(),
        instance_type: "t3.micro".into(),
        state: InstanceStateName::Pending.into(),
        state_reason: None,
        state_transition_reason: String::new(),
        launch_time: "2026-05-01T12:00:00.000Z".into(),
        ami_launch_index: launch_index,
        placement: Placement {
            availability_zone: "local-1a".into(),
            tenancy: "default".into(),
            group_name: String::new(),
        },
        private_ip_address: Some(format!("10.0.0.{}", 10 + launch_index)),
        private_dns_name: "ip-10-0-0-10.ec2.internal".into(),
        public_ip_address: None,
        key_name: Some("my-key".into()),
        architecture: "x86_64".into(),
        root_device_name: "/dev/xvda".into(),
        root_device_type: "ebs".into(),
        block_device_mappings: vec![InstanceBlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: EbsInstanceBlockDevice {
                volume_id: format!("vol-{}", &instance_id[2..]),
                status: "attached".into(),
                attach_time: "2026-05-01T12:00:01.000Z".into(),
                delete_on_termination: true,
            },
        }],
        network_interfaces: vec![InstanceNetworkInterface {
            network_interface_id: format!("eni-{}", &instance_id[2..]),
            mac_address: "02:00:00:00:00:01".into(),
            private_ip_address: Some("10.0.0.10".into()),
            description: String::new(),
            status: "in-use".into(),
            interface_type: "interface".into(),
            source_dest_check: true,
            attachment: NetworkInterfaceAttachment {
                attachment_id: "eni-attach-0123456789abcdef0".into(),
                device_index: 0,
                network_card_index: 0,
                status: "attached".into(),
                attach_time: "2026-05-01T12:00:01.000Z".into(),
                delete_on_termination: true,
            },
        }],
        metadata_options: MetadataOptions {
            state: "applied".into(),
            http_tokens: "required".into(),
            http_put_response_hop_limit: 2,
            http_endpoint: "enabled".into(),
            http_protocol_ipv6: "disabled".into(),
            instance_metadata_tags: "disabled".into(),
        },
        ena_support: true,
        sriov_net_support: None,
        hibernation_options: HibernationOptions { configured: false },
        cpu_options: CpuOptions {
            core_count: 1,
            threads_per_core: 2,
        },
        ebs_optimized: true,
        virtualization_type: "hvm".into(),
        boot_mode: None,
        platform_details: "Linux/UNIX".into(),
        usage_operation: "RunInstances".into(),
        client_token: None,
        tags: Vec::new(),
    };
    InstanceRecord {
        instance,
        reservation_id: reservation.into(),
        owner_id: owner.into(),
        user_data: Some("ZWNobyBoaQ==".into()),
        shutdown_behavior: ShutdownBehavior::Stop,
        credit_specification: None,
        cpu_credits: None,
        launcher: serde_json::Value::Null,
    }
}

const A: &str = "i-0aaaaaaaaaaaaaaaa";
const B: &str = "i-0bbbbbbbbbbbbbbbb";
const C: &str = "i-0cccccccccccccccc";

#[test]
fn lifecycle_through_the_user_verbs() {
    let mut instance = record(A, "r-0123456789abcdef0", OWNER, 0);
    let change = serde_json::to_value(instance.complete().unwrap()).unwrap();
    assert_eq!(
        change,
        json!({"InstanceId": A, "CurrentState": {"Code": 16, "Name": "running"},
               "PreviousState": {"Code": 0, "Name": "pending"}})
    );
    let (change, outcome) = instance.apply(Action::Stop, NOW).unwrap();
    assert_eq!(
        (change.current_state.name, outcome),
        (
            InstanceStateName::Stopping,
            Outcome::Begin(InstanceStateName::Stopping)
        )
    );
    assert_eq!(
        instance.instance.state_transition_reason,
        "User initiated (2026-05-01 12:34:56 GMT)"
    );
    assert_eq!(
        instance.instance.state_reason.as_ref().unwrap().code,
        "Client.UserInitiatedShutdown"
    );
    // Stopping again while stopping changes nothing.
    assert_eq!(
        instance.apply(Action::Stop, NOW).unwrap().1,
        Outcome::NoChange
    );
    instance.complete().unwrap();
    assert_eq!(instance.state(), InstanceStateName::Stopped);
    let error = instance.apply(Action::Reboot, NOW).unwrap_err();
    assert_eq!(error.code, ErrorCode::IncorrectInstanceState);
    instance.apply(Action::Start, NOW).unwrap();
    instance.complete().unwrap();
    assert_eq!(instance.state(), InstanceStateName::Running);
    assert!(
        instance.instance.state_reason.is_none()
            && instance.instance.state_transition_reason.is_empty()
    );
    assert_eq!(
        instance.apply(Action::Reboot, NOW).unwrap().1,
        Outcome::Reboot
    );
    assert_eq!(
        instance.apply(Action::Hibernate, NOW).unwrap_err().code,
        ErrorCode::UnsupportedOperation
    );
    instance.instance.hibernation_options.configured = true;
    instance.apply(Action::Hibernate, NOW).unwrap();
    assert_eq!(
        instance.instance.state_reason.as_ref().unwrap().code,
        "Client.UserInitiatedHibernate"
    );
    instance.complete().unwrap();
    instance.apply(Action::Terminate, NOW).unwrap();
    instance.complete().unwrap();
    assert_eq!(instance.state(), InstanceStateName::Terminated);
    assert!(instance.complete().is_none());
    let error = instance.apply(Action::Start, NOW).unwrap_err();
    assert_eq!(
        error.message,
        format!("The instance '{A}' is not in a state from which it can be started.")
    );
}

#[test]
fn guest_shutdown_follows_the_shutdown_behaviour_and_failed_launches_terminate() {
    let mut stops = record(A, "r-0123456789abcdef0", OWNER, 0);
    stops.complete();
    stops.guest_shutdown(NOW).unwrap();
    assert_eq!(stops.state(), InstanceStateName::Stopping);
    assert_eq!(
        stops.instance.state_reason.as_ref().unwrap().code,
        "Client.InstanceInitiatedShutdown"
    );
    let mut terminates = record(B, "r-0123456789abcdef0", OWNER, 1);
    terminates.shutdown_behavior = ShutdownBehavior::Terminate;
    terminates.complete();
    terminates.guest_shutdown(NOW).unwrap();
    assert_eq!(terminates.state(), InstanceStateName::ShuttingDown);
    let mut failed = record(C, "r-0123456789abcdef0", OWNER, 2);
    failed.launch_failed(NOW);
    assert_eq!(
        failed.instance.state_reason.as_ref().unwrap().code,
        "Server.InternalError"
    );
    failed.complete();
    assert_eq!(failed.state(), InstanceStateName::Terminated);
}

#[test]
fn describe_instances_groups_reservations_and_filters() {
    let mut a = record(A, "r-0000000000000000a", OWNER, 0);
    a.complete();
    a.instance.tags = vec![Tag {
        key: "Name".into(),
        value: "web".into(),
    }];
    let mut b = record(B, "r-0000000000000000a", OWNER, 1);
    b.instance.instance_type = "m5.large".into();
    let mut c = record(C, "r-0000000000000000c", OWNER, 0);
    c.instance.launch_time = "2026-05-02T00:00:00.000Z".into();
    c.instance.placement.availability_zone = "local-1b".into();
    let theirs = record("i-0dddddddddddddddd", "r-0000000000000000d", OTHER, 0);
    let all = vec![c.clone(), b.clone(), theirs, a.clone()];
    let describe = |request: serde_json::Value| {
        describe_instances(all.clone(), &from_json(request).unwrap(), OWNER)
    };
    let ids_of = |value: serde_json::Value| -> Vec<Vec<String>> {
        value["Reservations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["Instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["InstanceId"].as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    };
    let everything = describe(json!({})).unwrap();
    assert_eq!(ids_of(everything.clone()), [vec![A, B], vec![C]]);
    let first = &everything["Reservations"][0];
    assert_eq!(first["ReservationId"], "r-0000000000000000a");
    assert_eq!(first["OwnerId"], OWNER);
    let instance = &first["Instances"][0];
    assert_eq!(instance["State"], json!({"Code": 16, "Name": "running"}));
    assert_eq!(instance["Placement"]["AvailabilityZone"], "local-1a");
    assert_eq!(
        instance["BlockDeviceMappings"][0]["Ebs"]["Status"],
        "attached"
    );
    assert_eq!(
        instance["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"],
        true
    );
    assert_eq!(instance["MetadataOptions"]["HttpTokens"], "required");
    assert_eq!(
        instance["NetworkInterfaces"][0]["Attachment"]["DeviceIndex"],
        0
    );
    assert_eq!(instance["HibernationOptions"], json!({"Configured": false}));
    assert!(
        instance.get("UserData").is_none(),
        "user data is an attribute, not described"
    );

    let filtered =
        |filters: serde_json::Value| ids_of(describe(json!({"Filters": filters})).unwrap());
    assert_eq!(
        filtered(json!([{"Name": "instance-state-name", "Values": ["running"]}])),
        [vec![A]]
    );
    assert_eq!(
        filtered(json!([{"Name": "instance-state-code", "Values": ["0"]}])),
        [vec![B], vec![C]]
    );
    assert_eq!(
        filtered(json!([{"Name": "instance-type", "Values": ["m5.*"]}])),
        [vec![B]]
    );
    assert_eq!(
        filtered(json!([{"Name": "availability-zone", "Values": ["local-1b"]}])),
        [vec![C]]
    );
    assert_eq!(
        filtered(json!([{"Name": "tag:Name", "Values": ["web"]}])),
        [vec![A]]
    );
    assert_eq!(
        filtered(json!([{"Name": "tag-key", "Values": ["Name"]}])),
        [vec![A]]
    );
    assert_eq!(
        filtered(json!([{"Name": "image-id", "Values": ["ami-0123456789abcdef0"]}]))
            .concat()
            .len(),
        3
    );
    assert_eq!(
        filtered(json!([{"Name": "instance-id", "Values": [C]}])),
        [vec![C]]
    );
    assert_eq!(
        ids_of(describe(json!({"InstanceIds": [B]})).unwrap()),
        [vec![B]]
    );

    let error = describe(json!({"InstanceIds": ["i-0dddddddddddddddd", "i-0eeeeeeeeeeeeeeee"]}))
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidInstanceIdNotFound);
    assert_eq!(
        error.message,
        "The instance IDs 'i-0dddddddddddddddd, i-0eeeeeeeeeeeeeeee' do not exist"
    );
    assert_eq!(
        describe(json!({"InstanceIds": ["i-12"]})).unwrap_err().code,
        ErrorCode::InvalidInstanceIdMalformed
    );
    assert_eq!(
        describe(json!({"Filters": [{"Name": "colour", "Values": ["x"]}]}))
            .unwrap_err()
            .code,
        ErrorCode::InvalidParameterValue
    );
}

#[test]
fn state_directory_survives_reopening_and_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = InstanceStore::open(dir.path().join("instances")).unwrap();
    store
        .put(&record(A, "r-0123456789abcdef0", OWNER, 0))
        .unwrap();
    store
        .put(&record(B, "r-0123456789abcdef0", OWNER, 1))
        .unwrap();
    let change = store
        .update(A, |instance| {
            instance.complete();
            instance.launcher = json!({"VmmPid": 1234});
            Ok(instance.state())
        })
        .unwrap();
    assert_eq!(change, InstanceStateName::Running);
    // A failed change writes nothing.
    let error = store
        .update(B, |instance| {
            instance.apply(Action::Reboot, NOW).map(|_| ())
        })
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::IncorrectInstanceState);
    // Leftovers of a crash mid-write and foreign files are ignored.
    std::fs::write(
        dir.path().join("instances").join(format!(".{C}.json.tmp")),
        b"{half",
    )
    .unwrap();
    std::fs::write(dir.path().join("instances").join("notes.txt"), b"x").unwrap();
    std::fs::write(
        dir.path()
            .join("instances")
            .join("i-0ffffffffffffffff.json"),
        b"corrupt",
    )
    .unwrap();

    let reopened = InstanceStore::open(dir.path().join("instances")).unwrap();
    let mut listed = reopened.list().unwrap();
    listed.sort_by(|x, y| x.instance.instance_id.cmp(&y.instance.instance_id));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].state(), InstanceStateName::Running);
    assert_eq!(listed[0].launcher, json!({"VmmPid": 1234}));
    assert_eq!(listed[1].state(), InstanceStateName::Pending);
    assert_eq!(listed[1], record(B, "r-0123456789abcdef0", OWNER, 1));
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("instances").join(format!("{A}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk["Instance"]["State"]["Name"], "running");
    assert_eq!(on_disk["UserData"], "ZWNobyBoaQ==");
    assert_eq!(
        reopened.get(C).unwrap_err().code,
        ErrorCode::InvalidInstanceIdNotFound
    );
    assert_eq!(
        reopened.get("i-0ffffffffffffffff").unwrap_err().code,
        ErrorCode::InternalError
    );
    assert_eq!(
        reopened.get("vol-0123").unwrap_err().code,
        ErrorCode::InvalidInstanceIdMalformed
    );
    reopened.remove(B).unwrap();
    assert_eq!(
        reopened.remove(B).unwrap_err().code,
        ErrorCode::InvalidInstanceIdNotFound
    );
    assert_eq!(reopened.list().unwrap().len(), 1);
}

#[test]
fn credit_accounts_persist_with_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = InstanceStore::open(dir.path()).unwrap();
    let mut instance = record(A, "r-0123456789abcdef0", OWNER, 0);
    let info = crate::instance_types::lookup("t3.micro").unwrap();
    let mut credits = crate::cpu_credits::CreditAccount::new(
        info,
        crate::cpu_credits::CreditMode::Standard,
        std::time::Duration::from_secs(NOW),
    )
    .unwrap();
    credits.update(std::time::Duration::from_secs(NOW + 3600), 0);
    instance.credit_specification = Some(crate::cpu_credits::CreditMode::Standard);
    instance.cpu_credits = Some(credits.clone());
    store.put(&instance).unwrap();
    let back = store.get(A).unwrap();
    assert_eq!(back.cpu_credits, Some(credits));
    assert!((back.cpu_credits.unwrap().balance() - 12.0).abs() < 1e-9);
}
