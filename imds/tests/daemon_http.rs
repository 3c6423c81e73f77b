//! imdsd over real sockets: HTTP robustness, token security, rate limit, reload, hop limit.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const INSTANCE_A: &str = "i-0aaaaaaaaaaaaaaa1";
const INSTANCE_B: &str = "i-0bbbbbbbbbbbbbbb2";

fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new(system_tool("curl"))
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "5"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn token_from(daemon: &Daemon, interface: &str, ttl: u32) -> (u16, String) {
    curl(&[
        "--interface",
        interface,
        "-X",
        "PUT",
        "-H",
        &format!("X-aws-ec2-metadata-token-ttl-seconds: {ttl}"),
        &format!("{}/latest/api/token", daemon.endpoint()),
    ])
}

fn get_with_token(daemon: &Daemon, interface: &str, token: &str) -> (u16, String) {
    curl(&[
        "--interface",
        interface,
        "-H",
        &format!("X-aws-ec2-metadata-token: {token}"),
        &format!("{}/latest/meta-data/instance-id", daemon.endpoint()),
    ])
}

fn two_instances(options_b: serde_json::Value) -> serde_json::Value {
    let mut b = instance_json(INSTANCE_B, "127.0.0.2", options_b);
    b["network_interfaces"][0]["private_ipv4s"] = json!(["172.31.16.20"]);
    host_config(vec![
        instance_json(INSTANCE_A, "127.0.0.1", json!({"http_tokens": "required"})),
        b,
    ])
}

#[test]
fn instances_are_told_apart_by_source_address() {
    let dir = scratch_dir("sources");
    let daemon = Daemon::start(&dir, &two_instances(json!({})), &[]);
    let url = format!("{}/latest/meta-data/instance-id", daemon.endpoint());
    assert_eq!(
        curl(&["--interface", "127.0.0.2", &url]),
        (200, INSTANCE_B.to_string())
    );
    // A is tokens-required: a token-less GET is refused, with a token it answers A.
    assert_eq!(curl(&["--interface", "127.0.0.1", &url]).0, 401);
    let (status, token) = token_from(&daemon, "127.0.0.1", 60);
    assert_eq!(status, 200);
    assert_eq!(
        get_with_token(&daemon, "127.0.0.1", &token),
        (200, INSTANCE_A.to_string())
    );
    // An address no instance owns gets nothing.
    assert_eq!(curl(&["--interface", "127.0.0.3", &url]).0, 403);
}

#[test]
fn expired_forged_and_foreign_tokens_are_401_and_forwarded_puts_refused() {
    let dir = scratch_dir("token-security");
    let daemon = Daemon::start(
        &dir,
        &two_instances(json!({"http_tokens": "required"})),
        &[],
    );
    let (_, short_token) = token_from(&daemon, "127.0.0.1", 1);
    let (_, token_a) = token_from(&daemon, "127.0.0.1", 600);
    assert_eq!(get_with_token(&daemon, "127.0.0.1", &token_a).0, 200);
    // Another instance's token.
    assert_eq!(get_with_token(&daemon, "127.0.0.2", &token_a).0, 401);
    // Forged: a well-formed token that we did not seal, and a truncated real one.
    let forged = "A".repeat(token_a.len());
    assert_eq!(get_with_token(&daemon, "127.0.0.1", &forged).0, 401);
    assert_eq!(
        get_with_token(&daemon, "127.0.0.1", &token_a[..token_a.len() - 2]).0,
        401
    );
    // Expired.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get_with_token(&daemon, "127.0.0.1", &short_token).0, 401);
    // X-Forwarded-For on the PUT: no token.
    let (status, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        "-H",
        "X-Forwarded-For: 192.0.2.1",
        &format!("{}/latest/api/token", daemon.endpoint()),
    ]);
    assert_eq!(status, 403, "{body}");
    // TTL out of range and missing.
    for header in ["X-aws-ec2-metadata-token-ttl-seconds: 21601", "X-Other: 1"] {
        let (status, _) = curl(&[
            "-X",
            "PUT",
            "-H",
            header,
            &format!("{}/latest/api/token", daemon.endpoint()),
        ]);
        assert_eq!(status, 400, "{header}");
    }
}

#[test]
fn disabled_endpoint_is_403() {
    let dir = scratch_dir("disabled");
    let config = host_config(vec![instance_json(
        INSTANCE_A,
        "127.0.0.1",
        json!({"http_endpoint": "disabled"}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    assert_eq!(token_from(&daemon, "127.0.0.1", 60).0, 403);
    let url = format!("{}/latest/meta-data/", daemon.endpoint());
    assert_eq!(curl(&[&url]).0, 403);
}

#[test]
fn malformed_requests_get_400_without_disturbing_other_clients() {
    let dir = scratch_dir("malformed");
    let config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    let daemon = Daemon::start(&dir, &config, &[]);
    let request = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut good_client = connect(daemon.port);
    assert_eq!(send(&mut good_client, request).body, INSTANCE_A);

    for garbage in [
        "GARBAGE\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let mut bad_client = connect(daemon.port);
        let response = send(&mut bad_client, garbage);
        assert_eq!(response.status, 400, "{garbage:?}");
        assert_eq!(response.header("Connection"), Some("close"));
    }
    // Oversized head: 400, then the server closes.
    let mut flood = connect(daemon.port);
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    let _ = flood.write_all(&huge);
    assert_eq!(read_response(&mut flood).status, 400);

    // The keep-alive client that behaved is still served on the same connection.
    assert_eq!(send(&mut good_client, request).body, INSTANCE_A);
}

#[test]
fn partial_writes_and_pipelined_requests() {
    let dir = scratch_dir("partial");
    let config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    let daemon = Daemon::start(&dir, &config, &[]);
    let mut slow = connect(daemon.port);
    slow.set_nodelay(true).expect("nodelay");
    let mut other = connect(daemon.port);
    let request = "GET /latest/meta-data/placement/region HTTP/1.1\r\nHost: x\r\n\r\n";
    for (index, byte) in request.bytes().enumerate() {
        slow.write_all(&[byte]).expect("write one byte");
        if index % 8 == 0 {
            std::thread::sleep(Duration::from_millis(5));
            // Meanwhile another client is served without waiting for the slow one.
            if index == 16 {
                assert_eq!(send(&mut other, request).body, "eu-west-1");
            }
        }
    }
    assert_eq!(read_response(&mut slow).body, "eu-west-1");

    let pipelined = format!(
        "{request}GET /latest/meta-data/instance-type HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    slow.write_all(pipelined.as_bytes()).expect("write");
    assert_eq!(read_response(&mut slow).body, "eu-west-1");
    let last = read_response(&mut slow);
    assert_eq!((last.status, last.body.as_str()), (200, "m5.large"));
    assert_eq!(last.header("Connection"), Some("close"));
}

#[test]
fn requests_over_the_rate_limit_get_503() {
    let dir = scratch_dir("ratelimit");
    let config = host_config(vec![instance_json(
        INSTANCE_A,
        "127.0.0.1",
        json!({"requests_per_second": 5}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    let mut client = connect(daemon.port);
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = (0..12)
        .map(|_| send(&mut client, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n").status)
        .collect();
    // A burst of 5, plus 5 per second of however long a loaded machine took to send them.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    let ok = statuses.iter().filter(|&&status| status == 200).count();
    let throttled = statuses.iter().filter(|&&status| status == 503).count();
    assert!(
        ok >= 5 && ok <= 5 + refilled,
        "{statuses:?} in {:?}",
        started.elapsed()
    );
    assert!(throttled >= 1 || refilled >= 7, "{statuses:?}");
    assert_eq!(ok + throttled, statuses.len(), "{statuses:?}");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        send(&mut client, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n").status,
        200
    );
}

fn rewrite_instance_type(daemon: &Daemon, instance_type: &str) {
    let mut config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    config["instances"][0]["instance_type"] = json!(instance_type);
    std::fs::write(
        &daemon.config_path,
        serde_json::to_vec(&config).expect("json"),
    )
    .expect("write");
}

#[test]
fn reload_on_file_change_and_sighup_keeps_connections() {
    let request = "GET /latest/meta-data/instance-type HTTP/1.1\r\n\r\n";
    // File watching.
    let dir = scratch_dir("reload-watch");
    let config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    let daemon = Daemon::start(&dir, &config, &["--watch-interval", "1"]);
    let mut client = connect(daemon.port);
    assert_eq!(send(&mut client, request).body, "m5.large");
    rewrite_instance_type(&daemon, "c6i.xlarge");
    assert!(daemon.wait_for_log("reloaded (file changed)", Duration::from_secs(5)));
    assert_eq!(send(&mut client, request).body, "c6i.xlarge");
    // A broken config is refused and the old one stays.
    std::fs::write(&daemon.config_path, b"{ not json").expect("write");
    assert!(daemon.wait_for_log("keeping the previous config", Duration::from_secs(5)));
    assert_eq!(send(&mut client, request).body, "c6i.xlarge");
    drop(daemon);

    // SIGHUP only.
    let dir = scratch_dir("reload-hup");
    let daemon = Daemon::start(&dir, &config, &["--watch-interval", "0"]);
    let mut client = connect(daemon.port);
    assert_eq!(send(&mut client, request).body, "m5.large");
    rewrite_instance_type(&daemon, "r7g.large");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        send(&mut client, request).body,
        "m5.large",
        "no reload without SIGHUP"
    );
    run_ok(Command::new("kill").args(["-HUP", &daemon.pid().to_string()]));
    assert!(daemon.wait_for_log("reloaded (SIGHUP)", Duration::from_secs(5)));
    assert_eq!(send(&mut client, request).body, "r7g.large");
}

#[test]
fn describe_json_lists_instances_and_paths() {
    let dir = scratch_dir("describe");
    let config_path = dir.join("config.json");
    let config = two_instances(json!({}));
    std::fs::write(&config_path, serde_json::to_vec(&config).expect("json")).expect("write");
    let stdout = run_ok(
        Command::new(env!("CARGO_BIN_EXE_imdsd"))
            .arg("--config")
            .arg(&config_path)
            .arg("--json"),
    );
    let description: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let instances = description["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2);
    assert_eq!(instances[1]["instance_id"], INSTANCE_B);
    assert_eq!(instances[1]["source_addresses"], json!(["127.0.0.2"]));
    let paths = instances[0]["paths"].as_array().expect("paths");
    assert!(paths.iter().any(|path| path == "meta-data/instance-id"));
    assert!(paths.iter().any(|path| path == "user-data"));
}

#[test]
fn token_responses_leave_with_the_hop_limit_as_ip_ttl() {
    let dir = scratch_dir("hop-limit");
    let config = host_config(vec![instance_json(
        INSTANCE_A,
        "127.0.0.1",
        json!({"http_put_response_hop_limit": 3}),
    )]);
    let daemon = Daemon::start(&dir, &config, &[]);
    // Capture the daemon's outgoing packets that carry data (the response).
    let filter = format!(
        "tcp src port {} and tcp[tcpflags] & tcp-push != 0",
        daemon.port
    );
    let mut tcpdump = Command::new(system_tool("tcpdump"))
        .args(["-i", "lo", "-nn", "-v", "-l", "-c", "2", &filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    let mut client = connect(daemon.port);
    let token = send(
        &mut client,
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert_eq!(token.status, 200);
    // A second, token-less connection's responses keep the default TTL.
    let mut plain = connect(daemon.port);
    assert_eq!(
        send(&mut plain, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n").status,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tcpdump.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = tcpdump.kill();
    let output = tcpdump.wait_with_output().expect("tcpdump output");
    let capture = String::from_utf8_lossy(&output.stdout);
    let ttls: Vec<&str> = capture
        .split("ttl ")
        .skip(1)
        .filter_map(|rest| rest.split([',', ' ']).next())
        .collect();
    assert_eq!(ttls, vec!["3", "64"], "capture:\n{capture}");
}

fn closed_by_server(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0))
}

#[test]
fn slow_idle_and_surplus_clients_are_cut_off_without_hurting_others() {
    let dir = scratch_dir("limits");
    let config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    let daemon = Daemon::start(
        &dir,
        &config,
        &[
            "--request-timeout-ms",
            "500",
            "--idle-timeout-ms",
            "1500",
            "--max-connections",
            "3",
        ],
    );
    let request = "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
    let mut good = connect(daemon.port);
    assert_eq!(send(&mut good, request).body, INSTANCE_A);

    // Slowloris: half a request, then silence. Closed after the request timeout.
    let mut slow = connect(daemon.port);
    slow.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nX-Slow: ")
        .expect("write");
    let started = std::time::Instant::now();
    assert!(closed_by_server(&mut slow, Duration::from_secs(3)));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // Surplus: with `good` and one more open, the fourth connection is closed at once.
    let mut second = connect(daemon.port);
    assert_eq!(send(&mut second, request).body, INSTANCE_A);
    let mut third = connect(daemon.port);
    assert_eq!(send(&mut third, request).body, INSTANCE_A);
    let mut surplus = connect(daemon.port);
    // Well before the idle timeout could be the reason.
    assert!(closed_by_server(&mut surplus, Duration::from_millis(700)));
    assert_eq!(
        send(&mut good, request).body,
        INSTANCE_A,
        "others unaffected"
    );

    // Idle keep-alive connections close after the idle timeout.
    assert!(closed_by_server(&mut second, Duration::from_secs(3)));
}

#[test]
fn toml_config_serves_the_same_instance() {
    let dir = scratch_dir("toml");
    let config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    let toml_path = dir.join("imdsd.toml");
    std::fs::write(&toml_path, toml::to_string(&config).expect("as TOML")).expect("write");
    let mut daemon_process = Command::new(env!("CARGO_BIN_EXE_imdsd"))
        .arg("--config")
        .arg(&toml_path)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start imdsd");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(daemon_process.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read port");
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut client = connect(port);
    let response = send(
        &mut client,
        "GET /latest/meta-data/placement/region HTTP/1.1\r\n\r\n",
    );
    let _ = daemon_process.kill();
    let _ = daemon_process.wait();
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "eu-west-1")
    );
}

#[test]
fn ipv6_clients_are_served_and_get_the_hop_limit() {
    let dir = scratch_dir("ipv6");
    let config = host_config(vec![instance_json(
        INSTANCE_A,
        "::1",
        json!({"http_put_response_hop_limit": 5}),
    )]);
    let daemon = Daemon::start(&dir, &config, &["--listen", "[::1]:0"]);
    let port = daemon.ports[1];
    // BPF cannot index TCP flags over IPv6; capture the token connection's first packets
    // from the server (SYN-ACK, ACK, response) and pick those with a payload below.
    let filter = format!("ip6 and tcp src port {port}");
    let tcpdump = Command::new(system_tool("tcpdump"))
        .args(["-i", "lo", "-nn", "-v", "-l", "-c", "3", &filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    let (status, token) = curl(&[
        "-g",
        "-X",
        "PUT",
        "-H",
        "X-aws-ec2-metadata-token-ttl-seconds: 60",
        &format!("http://[::1]:{port}/latest/api/token"),
    ]);
    assert_eq!(status, 200);
    let (status, body) = curl(&[
        "-g",
        "-H",
        &format!("X-aws-ec2-metadata-token: {token}"),
        &format!("http://[::1]:{port}/latest/meta-data/instance-id"),
    ]);
    assert_eq!((status, body.as_str()), (200, INSTANCE_A));
    let output = tcpdump.wait_with_output().expect("tcpdump");
    let capture = String::from_utf8_lossy(&output.stdout);
    // "(flowlabel 0x..., hlim 5, next-header TCP (6) payload length: 290)"; a bare ACK or
    // SYN-ACK is at most 40 bytes of TCP header.
    let data_hop_limits: Vec<&str> = capture
        .lines()
        .filter(|line| {
            line.split("payload length: ")
                .nth(1)
                .and_then(|rest| rest.split(')').next()?.parse::<u32>().ok())
                .is_some_and(|length| length > 40)
        })
        .filter_map(|line| line.split("hlim ").nth(1)?.split(',').next())
        .collect();
    assert_eq!(data_hop_limits, vec!["5"], "capture:\n{capture}");
    // 127.0.0.1 is not this instance's address any more.
    assert_eq!(
        curl(&[&format!("{}/latest/meta-data/", daemon.endpoint())]).0,
        403
    );
}

#[test]
fn multi_threaded_runtime_serves_concurrent_clients() {
    let dir = scratch_dir("threads");
    let config = host_config(vec![instance_json(INSTANCE_A, "127.0.0.1", json!({}))]);
    let daemon = Daemon::start(&dir, &config, &["--threads", "2"]);
    let port = daemon.port;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = connect(port);
                (0..50)
                    .map(|_| {
                        send(
                            &mut stream,
                            "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n",
                        )
                        .body
                    })
                    .filter(|body| body == INSTANCE_A)
                    .count()
            })
        })
        .collect();
    let answered: usize = clients
        .into_iter()
        .map(|client| client.join().expect("client"))
        .sum();
    assert_eq!(answered, 8 * 50);
}
