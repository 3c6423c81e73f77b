//! A fixed instance for the fuzz targets (tokens required, so token parsing is exercised).

pub fn record() -> imds::InstanceRecord {
    serde_json::from_value(serde_json::json!({
        "instance_id": "i-0123456789abcdef0",
        "image_id": "ami-1",
        "instance_type": "m5.large",
        "reservation_id": "r-1",
        "placement": {"availability_zone": "eu-west-1b"},
        "network_interfaces": [{
            "mac": "02:00:00:00:00:01", "interface_id": "eni-1",
            "private_ipv4s": ["172.31.16.10"],
            "subnet_id": "subnet-1", "subnet_ipv4_cidr_block": "172.31.16.0/20",
            "vpc_id": "vpc-1", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"]
        }],
        "public_keys": [{"name": "k", "openssh_key": "ssh-ed25519 AAAA"}],
        "iam": {"role_name": "r", "instance_profile_arn": "arn", "instance_profile_id": "id"},
        "user_data": "hello",
        "metadata_options": {"http_tokens": "optional", "requests_per_second": 0}
    }))
    .expect("fixed record parses")
}
