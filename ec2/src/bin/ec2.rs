//! `ec2`: the front door's CLI, with `aws ec2` verbs and flags. Prints EC2's JSON;
//! errors as `{"Error":{"Code","Message"}}` on stderr with exit status 254 (the aws
//! CLI's service-error status). State lives in `--state-dir` (default
//! `$NITRO_STATE_DIR`, else `/var/lib/nitro`); the block service starts on demand.

use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ec2::cpu_credits::CreditMode;
use ec2::images::{DescribeImagesRequest, ModifyImageAttributeRequest, RegisterImageRequest};
use ec2::instances::{
    parse_block_device_mappings, parse_metadata_options, parse_network_interfaces, parse_placement,
    Action, DescribeInstancesRequest, InstanceStateName, ShutdownBehavior,
};
use ec2::launcher::images::ImportRequest;
use ec2::launcher::paths::StatePaths;
use ec2::launcher::run::RunRequest;
use ec2::launcher::{supervisor, Launcher};
use ec2::shorthand::{from_json, parse_argument, parse_list_arguments};
use ec2::user_data::UserData;
use ec2::Ec2Error;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "ec2",
    about = "EC2-style front door: images and instances on this host"
)]
struct Cli {
    /// State directory (volumes, snapshots, images, instances).
    #[arg(
        long,
        global = true,
        env = "NITRO_STATE_DIR",
        default_value = "/var/lib/nitro"
    )]
    state_dir: PathBuf,
    /// The caller's account id (launch permissions are checked against it).
    #[arg(long, global = true, env = "NITRO_ACCOUNT_ID", default_value = ec2::ids::LOCAL_ACCOUNT_ID)]
    account_id: String,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Boot instances (the default AMI and attach its console when run with no arguments).
    RunInstances {
        #[arg(long)]
        image_id: Option<String>,
        #[arg(long)]
        instance_type: Option<String>,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Script or text; `file://PATH` reads a file (as the aws CLI does).
        #[arg(long)]
        user_data: Option<String>,
        #[arg(long)]
        key_name: Option<String>,
        #[arg(long)]
        block_device_mappings: Option<String>,
        #[arg(long)]
        metadata_options: Option<String>,
        #[arg(long)]
        placement: Option<String>,
        #[arg(long)]
        instance_initiated_shutdown_behavior: Option<String>,
        /// `Configured=true`: the instance can be hibernated (needs an encrypted root).
        #[arg(long)]
        hibernation_options: Option<String>,
        /// The primary ENI (DeviceIndex=0): `InterfaceType=interface` (the launcher
        /// decides), `enhanced` (an SR-IOV VF or fail) or `emulated` (virtio-net);
        /// `Description`, `PrivateIpAddress`.
        #[arg(long, num_args = 1..)]
        network_interfaces: Vec<String>,
        /// `CpuCredits=standard|unlimited` (T types; default unlimited).
        #[arg(long)]
        credit_specification: Option<String>,
        /// Idempotency: a retry with the same token returns the first call's
        /// reservation instead of launching again.
        #[arg(long)]
        client_token: Option<String>,
        /// Follow the console after launch (default when no other argument is given).
        #[arg(long)]
        attach: bool,
        /// Never attach the console.
        #[arg(long, conflicts_with = "attach")]
        no_attach: bool,
    },
    DescribeInstances {
        #[arg(long, num_args = 1..)]
        instance_ids: Vec<String>,
        #[arg(long, num_args = 1..)]
        filters: Vec<String>,
    },
    StartInstances(StateArgs),
    StopInstances(StateArgs),
    RebootInstances(StateArgs),
    TerminateInstances(StateArgs),
    GetConsoleOutput {
        #[arg(long)]
        instance_id: String,
    },
    DescribeInstanceStatus {
        #[arg(long, num_args = 1..)]
        instance_ids: Vec<String>,
    },
    /// Follow an instance's console (type lines to send them; Ctrl-D detaches).
    AttachConsole {
        #[arg(long)]
        instance_id: String,
    },
    ImportImage {
        /// `Format=raw|qcow2,Url=file:///path` (or JSON), as aws ec2 import-image.
        #[arg(long)]
        disk_containers: String,
        /// Without one, the image boots the newest kernel in its root volume's /boot.
        #[arg(long)]
        kernel_file: Option<PathBuf>,
        #[arg(long)]
        ramdisk_file: Option<PathBuf>,
        #[arg(long, default_value = "console=ttyS0 root=/dev/vda rw")]
        kernel_parameters: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, default_value = "/dev/vda")]
        root_device_name: String,
        #[arg(long)]
        encrypted: bool,
        #[arg(long)]
        kms_key_id: Option<String>,
    },
    RegisterImage {
        /// The whole request as JSON (EC2 field names), or use the flags.
        #[arg(long)]
        cli_input_json: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        root_device_name: Option<String>,
        #[arg(long)]
        block_device_mappings: Option<String>,
        #[arg(long)]
        kernel_id: Option<String>,
        #[arg(long)]
        ramdisk_id: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    DescribeImages {
        #[arg(long, num_args = 1..)]
        image_ids: Vec<String>,
        #[arg(long, num_args = 1..)]
        owners: Vec<String>,
        #[arg(long, num_args = 1..)]
        executable_users: Vec<String>,
        #[arg(long, num_args = 1..)]
        filters: Vec<String>,
    },
    DeregisterImage {
        #[arg(long)]
        image_id: String,
    },
    CreateImage {
        #[arg(long)]
        instance_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        no_reboot: bool,
    },
    /// A new AMI with copies of the source's snapshots (optionally encrypted).
    CopyImage {
        #[arg(long)]
        source_image_id: String,
        #[arg(long)]
        source_region: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        encrypted: bool,
        #[arg(long)]
        kms_key_id: Option<String>,
        #[arg(long)]
        copy_image_tags: bool,
    },
    ModifyImageAttribute {
        #[arg(long)]
        image_id: String,
        #[arg(long)]
        launch_permission: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    DescribeImageAttribute {
        #[arg(long)]
        image_id: String,
        #[arg(long)]
        attribute: String,
    },
    /// `--instance-credit-specifications InstanceId=i-..,CpuCredits=standard ...`
    ModifyInstanceCreditSpecification {
        #[arg(long, num_args = 1.., required = true)]
        instance_credit_specifications: Vec<String>,
    },
    /// CPU credit modes (and this host's balances) of T instances.
    DescribeInstanceCreditSpecifications {
        #[arg(long, num_args = 1..)]
        instance_ids: Vec<String>,
    },
    DescribeInstanceTypes {
        #[arg(long, num_args = 1..)]
        instance_types: Vec<String>,
    },
    /// Serve the HTTP API (EC2's query protocol: `aws ec2 --endpoint-url
    /// http://ADDR ...`). Prints `listening on http://ADDR` once ready.
    Serve {
        /// Address to listen on; port 0 picks a free one. Requests are not
        /// authenticated: keep it on loopback.
        #[arg(long, default_value = "127.0.0.1:8773")]
        listen: String,
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
    #[command(name = "__supervise", hide = true)]
    Supervise {
        instance_id: String,
    },
}

#[derive(clap::Args)]
struct StateArgs {
    #[arg(long, num_args = 1.., required = true)]
    instance_ids: Vec<String>,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    hibernate: bool,
    /// Wait until the instances reach the verb's end state.
    #[arg(long)]
    wait: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_micros()
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(Some(value)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Ec2Error>() {
            Some(ec2) => {
                eprintln!("{}", ec2.to_json());
                eprintln!(
                    "An error occurred ({}) : {}",
                    ec2.code.as_str(),
                    ec2.message
                );
                ExitCode::from(254)
            }
            None => {
                eprintln!("ec2: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn user_data_arg(text: &str) -> anyhow::Result<UserData> {
    let bytes = match text.strip_prefix("file://") {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        None => text.as_bytes().to_vec(),
    };
    Ok(UserData::from_raw(bytes)?)
}

/// `--filters Name=n,Values=a,b ...`: `Values` is a list member, so the aws CLI's
/// shorthand reads one value (`Values=a`) as a one-element list too.
fn filters(list: &[String]) -> anyhow::Result<Value> {
    let mut parsed = parse_list_arguments("--filters", list)?;
    for filter in &mut parsed {
        if let Some(values) = filter.get_mut("Values") {
            if !values.is_array() {
                *values = Value::Array(vec![values.take()]);
            }
        }
    }
    Ok(Value::Array(parsed))
}

fn run(cli: Cli) -> anyhow::Result<Option<Value>> {
    let paths = StatePaths::new(&cli.state_dir);
    if let Verb::Supervise { instance_id } = &cli.verb {
        supervisor::supervise(&paths, instance_id)?;
        return Ok(None);
    }
    if let Verb::Serve { listen, workers } = &cli.verb {
        return serve(&cli.state_dir, &cli.account_id, listen, *workers);
    }
    let launcher = Launcher::open(paths, &cli.account_id)?;
    let value = match cli.verb {
        Verb::Supervise { .. } | Verb::Serve { .. } => return Ok(None),
        Verb::RunInstances {
            image_id,
            instance_type,
            count,
            user_data,
            key_name,
            block_device_mappings,
            metadata_options,
            placement,
            instance_initiated_shutdown_behavior,
            hibernation_options,
            network_interfaces,
            credit_specification,
            client_token,
            attach,
            no_attach,
        } => {
            let bare = image_id.is_none()
                && instance_type.is_none()
                && user_data.is_none()
                && block_device_mappings.is_none()
                && count == 1;
            let hibernation = match &hibernation_options {
                Some(text) => {
                    let value = parse_argument("--hibernation-options", text)?;
                    match &value["Configured"] {
                        Value::Bool(b) => *b,
                        Value::String(s) if s == "true" || s == "false" => s == "true",
                        Value::Null => false,
                        other => {
                            return Err(Ec2Error::invalid_value(format!(
                                "Invalid value {other} for HibernationOptions.Configured"
                            ))
                            .into())
                        }
                    }
                }
                None => false,
            };
            let credit_specification = match &credit_specification {
                Some(text) => {
                    let value = parse_argument("--credit-specification", text)?;
                    let mode = value["CpuCredits"]
                        .as_str()
                        .ok_or_else(|| Ec2Error::missing("CreditSpecification.CpuCredits"))?;
                    Some(mode.parse::<CreditMode>()?)
                }
                None => None,
            };
            let request = RunRequest {
                client_token,
                credit_specification,
                hibernation,
                network_interfaces: if network_interfaces.is_empty() {
                    Vec::new()
                } else {
                    parse_network_interfaces(&network_interfaces)?
                },
                image_id,
                instance_type,
                count,
                user_data: user_data.as_deref().map(user_data_arg).transpose()?,
                key_name,
                block_device_mappings: match &block_device_mappings {
                    Some(text) => parse_block_device_mappings(std::slice::from_ref(text))?,
                    None => Vec::new(),
                },
                metadata_options: metadata_options
                    .as_deref()
                    .map(parse_metadata_options)
                    .transpose()?,
                placement: placement.as_deref().map(parse_placement).transpose()?,
                shutdown_behavior: match instance_initiated_shutdown_behavior.as_deref() {
                    None | Some("stop") => ShutdownBehavior::Stop,
                    Some("terminate") => ShutdownBehavior::Terminate,
                    Some(other) => {
                        return Err(Ec2Error::invalid_value(format!(
                            "Value ({other}) for parameter instanceInitiatedShutdownBehavior is invalid. Valid values: stop, terminate"
                        ))
                        .into())
                    }
                },
            };
            let reply = launcher.run_instances(&request)?;
            if (attach || bare) && !no_attach {
                let id = reply["Instances"][0]["InstanceId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                eprintln!(
                    "ec2: launched {id}; attaching its console (Ctrl-D detaches; the instance keeps running)"
                );
                attach_console(&launcher, &id)?;
                return Ok(None);
            }
            reply
        }
        Verb::DescribeInstances {
            instance_ids,
            filters: f,
        } => {
            let request: DescribeInstancesRequest =
                from_json(json!({"InstanceIds": instance_ids, "Filters": filters(&f)?}))?;
            launcher.describe_instances(&request)?
        }
        Verb::StartInstances(a) => state_verb(&launcher, a, Action::Start)?,
        Verb::StopInstances(a) => {
            let action = if a.hibernate {
                Action::Hibernate
            } else {
                Action::Stop
            };
            state_verb(&launcher, a, action)?
        }
        Verb::RebootInstances(a) => state_verb(&launcher, a, Action::Reboot)?,
        Verb::TerminateInstances(a) => state_verb(&launcher, a, Action::Terminate)?,
        Verb::GetConsoleOutput { instance_id } => launcher.console_output(&instance_id)?,
        Verb::DescribeInstanceStatus { instance_ids } => launcher.instance_status(&instance_ids)?,
        Verb::AttachConsole { instance_id } => {
            attach_console(&launcher, &instance_id)?;
            return Ok(None);
        }
        Verb::ImportImage {
            disk_containers,
            kernel_file,
            ramdisk_file,
            kernel_parameters,
            name,
            description,
            root_device_name,
            encrypted,
            kms_key_id,
        } => {
            let disk = parse_argument("--disk-containers", &disk_containers)?;
            let disk = if disk.is_array() {
                disk[0].clone()
            } else {
                disk
            };
            let url = disk["Url"].as_str().unwrap_or_default();
            let path = url.strip_prefix("file://").ok_or_else(|| {
                Ec2Error::invalid_value(format!(
                    "Url {url:?} must be file:///path (only local disks can be imported here)"
                ))
            })?;
            launcher.import_image(&ImportRequest {
                disk: PathBuf::from(path),
                format: disk["Format"].as_str().map(str::to_lowercase),
                kernel: kernel_file,
                ramdisk: ramdisk_file,
                kernel_parameters,
                name,
                description,
                root_device_name,
                encrypted,
                kms_key_id,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })?
        }
        Verb::RegisterImage {
            cli_input_json,
            name,
            root_device_name,
            block_device_mappings,
            kernel_id,
            ramdisk_id,
            description,
        } => {
            let request: RegisterImageRequest = match cli_input_json {
                Some(text) => from_json(parse_argument("--cli-input-json", &text)?)?,
                None => {
                    let mappings = match &block_device_mappings {
                        Some(text) => serde_json::to_value(parse_block_device_mappings(
                            std::slice::from_ref(text),
                        )?)?,
                        None => json!([]),
                    };
                    from_json(json!({
                        "Name": name, "RootDeviceName": root_device_name,
                        "BlockDeviceMappings": mappings, "KernelId": kernel_id,
                        "RamdiskId": ramdisk_id, "Description": description,
                    }))?
                }
            };
            if let Some(kernel) = &request.kernel_id {
                launcher.kernels().kernel_meta(kernel)?;
            }
            let image = launcher.images().register(
                &request,
                &launcher.account,
                &launcher.snapshot_ops(),
            )?;
            json!({"ImageId": image.image_id})
        }
        Verb::DescribeImages {
            image_ids,
            owners,
            executable_users,
            filters: f,
        } => {
            let request: DescribeImagesRequest = from_json(json!({
                "ImageIds": image_ids, "Owners": owners,
                "ExecutableUsers": executable_users, "Filters": filters(&f)?,
            }))?;
            json!({"Images": launcher.images().describe(&request, &launcher.account)?})
        }
        Verb::DeregisterImage { image_id } => {
            launcher.images().deregister(&image_id, &launcher.account)?;
            json!({"Return": true})
        }
        Verb::CreateImage {
            instance_id,
            name,
            description,
            no_reboot,
        } => launcher.create_image(&instance_id, &name, description.as_deref(), no_reboot)?,
        Verb::CopyImage {
            source_image_id,
            source_region,
            name,
            description,
            encrypted,
            kms_key_id,
            copy_image_tags,
        } => {
            let request: ec2::images::CopyImageRequest = from_json(json!({
                "SourceImageId": source_image_id, "SourceRegion": source_region,
                "Name": name, "Description": description,
                "Encrypted": encrypted.then_some(true), "KmsKeyId": kms_key_id,
                "CopyImageTags": copy_image_tags.then_some(true),
            }))?;
            let image = launcher.images().copy_image(
                &request,
                &launcher.account,
                &launcher.snapshot_ops(),
            )?;
            json!({"ImageId": image.image_id})
        }
        Verb::ModifyImageAttribute {
            image_id,
            launch_permission,
            description,
        } => {
            let mut body = json!({"ImageId": image_id});
            if let Some(text) = launch_permission {
                body["LaunchPermission"] = parse_argument("--launch-permission", &text)?;
            }
            if let Some(text) = description {
                body["Description"] = json!({"Value": text});
            }
            let request: ModifyImageAttributeRequest = from_json(body)?;
            launcher
                .images()
                .modify_attribute(&request, &launcher.account)?;
            return Ok(None);
        }
        Verb::DescribeImageAttribute {
            image_id,
            attribute,
        } => launcher
            .images()
            .describe_attribute(&image_id, &attribute, &launcher.account)?,
        Verb::ModifyInstanceCreditSpecification {
            instance_credit_specifications,
        } => {
            let mut changes = Vec::new();
            for item in parse_list_arguments(
                "--instance-credit-specifications",
                &instance_credit_specifications,
            )? {
                let id = item["InstanceId"]
                    .as_str()
                    .ok_or_else(|| Ec2Error::missing("InstanceCreditSpecification.InstanceId"))?;
                let mode = item["CpuCredits"]
                    .as_str()
                    .ok_or_else(|| Ec2Error::missing("InstanceCreditSpecification.CpuCredits"))?;
                changes.push((id.to_string(), mode.parse::<CreditMode>()?));
            }
            launcher.modify_credit_specification(&changes)?
        }
        Verb::DescribeInstanceCreditSpecifications { instance_ids } => {
            launcher.describe_credit_specifications(&instance_ids)?
        }
        Verb::DescribeInstanceTypes { instance_types } => {
            ec2::instance_types::describe(&instance_types)?
        }
    };
    Ok(Some(value))
}

fn serve(
    state_dir: &std::path::Path,
    account: &str,
    listen: &str,
    workers: usize,
) -> anyhow::Result<Option<Value>> {
    // Open once up front so a bad state directory fails here, not per request.
    Launcher::open(StatePaths::new(state_dir), account)?;
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| listen.to_string());
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    let config = ec2::api::ApiConfig {
        state_dir: state_dir.to_path_buf(),
        account: account.to_string(),
    };
    for worker in ec2::api::serve(config, server, workers) {
        let _ = worker.join();
    }
    Ok(None)
}

fn state_verb(launcher: &Launcher, a: StateArgs, action: Action) -> anyhow::Result<Value> {
    let reply = launcher.change_state(&a.instance_ids, action, a.force)?;
    if a.wait {
        let target = match action {
            Action::Start | Action::Reboot => InstanceStateName::Running,
            Action::Stop | Action::Hibernate => InstanceStateName::Stopped,
            Action::Terminate => InstanceStateName::Terminated,
        };
        launcher.wait_for(&a.instance_ids, target, Duration::from_secs(300))?;
    }
    Ok(reply)
}

/// Follow console.log and send stdin lines to the guest's serial port, until the
/// instance stops or stdin ends.
fn attach_console(launcher: &Launcher, instance_id: &str) -> anyhow::Result<()> {
    let run = launcher.paths.run_dir(instance_id);
    let log_path = run.join("console.log");
    let input = run.join("console.in");
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines().map_while(Result::ok) {
            if let Ok(mut fifo) = std::fs::OpenOptions::new().write(true).open(&input) {
                let _ = fifo.write_all(format!("{line}\n").as_bytes());
            }
        }
        // Ctrl-D on a terminal: detach, the instance keeps running. Without a
        // terminal (a script), follow the console until the instance stops.
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            std::process::exit(0);
        }
    });
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        if let Ok(mut file) = std::fs::File::open(&log_path) {
            let _ = file.seek(SeekFrom::Start(offset));
            let mut bytes = Vec::new();
            if std::io::Read::read_to_end(&mut file, &mut bytes).is_ok() && !bytes.is_empty() {
                offset += bytes.len() as u64;
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
        }
        let record = launcher.instances().get(instance_id)?;
        if matches!(
            record.state(),
            InstanceStateName::Stopped | InstanceStateName::Terminated
        ) {
            eprintln!("\nec2: {instance_id} is {}", record.state().as_str());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
