//! DHCP and the metadata service on the guest's virtio-net link, end to end
//! in the test host. The guest configures eth0 by DHCP (answered by the
//! VMM: address, mask, gateway, MTU, as a VPC's DHCP), pings the gateway on
//! the tap's host side, and reaches 169.254.169.254 through its default
//! route; the VMM answers the metadata requests itself (nothing on the host
//! side knows about IMDS). IMDSv1 GET, IMDSv2 token PUT and a GET with the
//! token all work.

use std::time::Duration;

use integration_tests::{base64, field, guest_assets, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

const RECORD: &str = r#"{
  "instance_id": "i-0123456789abcdef0",
  "image_id": "ami-0abcdef1234567890",
  "instance_type": "m5.large",
  "reservation_id": "r-0123456789abcdef0",
  "placement": {"availability_zone": "eu-west-1b", "availability_zone_id": "euw1-az2"},
  "network_interfaces": [{
    "mac": "02:00:ac:1f:10:0a", "interface_id": "eni-0123", "device_number": 0,
    "private_ipv4s": ["172.31.16.10"], "public_ipv4s": [],
    "subnet_id": "subnet-01", "subnet_ipv4_cidr_block": "172.31.16.0/20",
    "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"],
    "security_groups": [{"id": "sg-01", "name": "default"}]
  }],
  "metadata_options": {"http_tokens": "optional", "http_endpoint": "enabled",
                       "http_put_response_hop_limit": 1}
}"#;

#[test]
fn guest_reaches_imds_on_its_own_link() {
    let assets = guest_assets();
    let record = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("imds-record.json");
    std::fs::write(&record, RECORD).unwrap();
    let guest = r#"
cat > /tmp/dhcp.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
ip link set "$interface" mtu "$mtu"
ip route add default via "$router"
echo "DHCP $ip/$mask $router $mtu"
EOS
chmod +x /tmp/dhcp.sh
ip link set eth0 up
udhcpc -i eth0 -n -q -t 5 -s /tmp/dhcp.sh >/dev/null 2>&1
echo "PING $(ping -c 2 -W 3 172.31.16.1 | grep -c 'bytes from')"
echo "IID $(wget -q -O - http://169.254.169.254/latest/meta-data/instance-id)"
echo "LOCALIP $(wget -q -O - http://169.254.169.254/latest/meta-data/local-ipv4)"
T=$(printf 'PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n' | nc 169.254.169.254 80 | tail -n 1)
echo "TOKLEN ${#T}"
echo "V2IID $(wget -q -O - --header "X-aws-ec2-metadata-token: $T" http://169.254.169.254/latest/meta-data/instance-id)"
# The issue's client: curl, as a user's scripts and cloud-init's helpers do it (IMDSv2).
CT=$(curl -sS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' http://169.254.169.254/latest/api/token)
echo "CURLTOKLEN ${#CT}"
echo "CURLIID $(curl -sS -H "X-aws-ec2-metadata-token: $CT" http://169.254.169.254/latest/meta-data/instance-id)"
echo "CURLNOTOKEN $(curl -s -o /dev/null -w '%{http_code}' -H 'X-aws-ec2-metadata-token: bogus' http://169.254.169.254/latest/meta-data/instance-id)"
"#;
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmm.run={}",
        base64(guest.as_bytes())
    );
    let script = format!(
        "ip tuntap add tap0 mode tap vnet_hdr && ip addr add 172.31.16.1/20 dev tap0 && ip link set tap0 up && \
         {vmm} --kernel {k} --initrd {i} --mem-mib 512 \
         --net tap=tap0,mac=02:00:ac:1f:10:0a,ip=172.31.16.10/20,mtu=1400 \
         --imds {r} --cmdline {c}; echo VMM-EXIT $?",
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&assets.tools_initramfs.to_string_lossy()),
        r = sh_quote(&record.to_string_lossy()),
        c = sh_quote(&cmdline),
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    assert_eq!(field(&out.stdout, "VMM-EXIT"), Some("0"), "{all}");
    assert_eq!(
        field(&out.stdout, "IID"),
        Some("i-0123456789abcdef0"),
        "IMDSv1:\n{all}"
    );
    assert_eq!(field(&out.stdout, "LOCALIP"), Some("172.31.16.10"), "{all}");
    let toklen: usize = field(&out.stdout, "TOKLEN")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(toklen >= 32, "a token came back from PUT:\n{all}");
    assert_eq!(
        field(&out.stdout, "V2IID"),
        Some("i-0123456789abcdef0"),
        "IMDSv2:\n{all}"
    );
    let curl_toklen: usize = field(&out.stdout, "CURLTOKLEN")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(curl_toklen >= 32, "curl got a token:\n{all}");
    assert_eq!(
        field(&out.stdout, "CURLIID"),
        Some("i-0123456789abcdef0"),
        "IMDSv2 with curl:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "CURLNOTOKEN"),
        Some("401"),
        "a bad token is refused:\n{all}"
    );
}
