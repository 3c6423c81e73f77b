//! Helpers shared by the ec2 crate's integration tests: the default AMI's files, and
//! the test-host scenarios' shell preamble and runner.

use std::path::Path;
use std::time::Duration;

use integration_tests::{repo_root, sh_quote, testhost_run, workspace_bin, TesthostOutput};

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

/// What every test-host scenario starts with: the `ec2` CLI as `$E` on a fresh state
/// directory, and shell helpers.
const PREAMBLE: &str = r#"
set -u
E="$EC2"
export NITRO_STATE_DIR=/tmp/nitro
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
console() { "$E" get-console-output --instance-id "$1" | json 'd["Output"]'; }
# waitcon ID TEXT [SECONDS [N]]: until the console shows TEXT (N times); on a timeout
# the console's and the instance's logs' tails, and `diagnose` if the scenario has one.
waitcon() {
    local n=${4:-1} i
    for i in $(seq $((${3:-240} * 2))); do
        [ "$(console "$1" | grep -c -- "$2")" -ge "$n" ] && return 0
        sleep 0.5
    done
    echo "TIMEOUT waiting for '$2' on $1"; console "$1" | tail -40
    tail -n 20 "$NITRO_STATE_DIR/run/$1/supervisor.log" "$NITRO_STATE_DIR/run/$1/vmm.log"
    if type diagnose >/dev/null 2>&1; then diagnose; fi
    return 1
}
# send ID LINE: type a line on the guest's console
send() { printf '%s\n' "$2" > "$NITRO_STATE_DIR/run/$1/console.in"; }
# err ARGS: the EC2 error code of a call that must fail (its JSON is stderr's first line)
err() { "$E" "$@" 2>&1 >/dev/null | head -1 | json 'd["Error"]["Code"]' 2>/dev/null; }
# default_ami: imports the default AMI (kernel, ramdisk, root) and prints its id
default_ami() {
    "$E" import-image --disk-containers "Format=raw,Url=file://$ROOTIMG" --kernel-file "$KERNEL" \
        --ramdisk-file "$RAMDISK" --kernel-parameters "$CMDLINE" --name nitro-default 2>/dev/null \
        | json 'd["ImageId"]'
}
"#;

/// Runs `body` (after the preamble) in the test host as `NAME.sh`, with `EC2`, `EBS`,
/// the default AMI's files (`ROOTIMG`, `KERNEL`, `RAMDISK`, `CMDLINE`) and `env` in its
/// environment. Returns the output and, for assertion messages, all of it as text.
pub fn run_scenario(
    name: &str,
    body: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> (TesthostOutput, String) {
    let ec2 = workspace_bin("ec2", "ec2");
    workspace_bin("vmm", "vmm");
    let ebs = workspace_bin("ebs-blockdev", "ebs");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ami_file("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let mut vars = vec![
        ("EC2", ec2.to_string_lossy().into_owned()),
        ("EBS", ebs.to_string_lossy().into_owned()),
        ("ROOTIMG", ami_file("root.img")),
        ("KERNEL", ami_file("kernel")),
        ("RAMDISK", ami_file("ramdisk.cpio.gz")),
        (
            "CMDLINE",
            manifest["cmdline"].as_str().expect("cmdline").to_string(),
        ),
    ];
    // A scenario's own values win (they come later).
    vars.extend(env.iter().cloned());
    let mut script = String::new();
    for (key, value) in vars {
        script.push_str(&format!("{key}={}\n", sh_quote(&value)));
    }
    script.push_str(PREAMBLE);
    script.push_str(body);
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.sh"));
    std::fs::write(&file, script).expect("scenario script");
    let out = testhost_run(
        &format!("bash {}", sh_quote(&file.to_string_lossy())),
        timeout,
    );
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    (out, all)
}
