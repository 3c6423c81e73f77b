//! `ebs`: command line for ebsd, with verbs and flags named after `aws ec2`, printing the
//! API's JSON. `copy-image-to-volume` / `copy-volume-to-image` move raw images through the
//! NBD export with a progress bar.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ebs_blockdev::api::client::{ApiClient, ApiTarget};
use ebs_blockdev::nbd::client::PendingRequest;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(
    name = "ebs",
    about = "Command line for ebsd (aws ec2-style verbs, JSON output)",
    version
)]
struct Cli {
    /// ebsd's API Unix socket.
    #[arg(
        long,
        env = "EBS_API_SOCK",
        default_value = "/run/ebsd/api.sock",
        global = true
    )]
    api_sock: PathBuf,
    /// ebsd's API TCP address (host:port); overrides --api-sock.
    #[arg(long, env = "EBS_API_URL", global = true)]
    api_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    CreateVolume {
        #[arg(long)]
        size: Option<u64>,
        #[arg(long)]
        volume_type: Option<String>,
        #[arg(long)]
        iops: Option<u32>,
        #[arg(long)]
        throughput: Option<u32>,
        #[arg(long, env = "EBS_AVAILABILITY_ZONE", default_value = "local-1a")]
        availability_zone: String,
        #[arg(long)]
        snapshot_id: Option<String>,
        #[arg(long)]
        encrypted: bool,
        #[arg(long)]
        kms_key_id: Option<String>,
        #[arg(long)]
        multi_attach_enabled: bool,
        /// Idempotency token: repeating the call with it returns the same volume.
        #[arg(long)]
        client_token: Option<String>,
        /// `ResourceType=volume,Tags=[{Key=k,Value=v},...]` (or JSON), as in `aws ec2`.
        #[arg(long, num_args = 1..)]
        tag_specifications: Vec<String>,
    },
    DeleteVolume {
        #[arg(long)]
        volume_id: String,
    },
    DescribeVolumes {
        #[arg(long, num_args = 1..)]
        volume_ids: Vec<String>,
        /// `Name=status,Values=available,in-use` (repeatable), as in `aws ec2`.
        #[arg(long, num_args = 1..)]
        filters: Vec<String>,
    },
    ModifyVolume {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        size: Option<u64>,
        #[arg(long)]
        volume_type: Option<String>,
        #[arg(long)]
        iops: Option<u32>,
        #[arg(long)]
        throughput: Option<u32>,
    },
    DescribeVolumesModifications {
        #[arg(long, num_args = 1..)]
        volume_ids: Vec<String>,
        /// `Name=modification-state,Values=optimizing` (repeatable), as in `aws ec2`.
        #[arg(long, num_args = 1..)]
        filters: Vec<String>,
    },
    AttachVolume {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        instance_id: String,
        #[arg(long)]
        device: Option<String>,
        #[arg(long, env = "EBS_AVAILABILITY_ZONE", default_value = "local-1a")]
        instance_availability_zone: String,
        #[arg(long)]
        read_only: bool,
    },
    DetachVolume {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        instance_id: Option<String>,
        #[arg(long)]
        force: bool,
    },
    CreateSnapshot {
        #[arg(long)]
        volume_id: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, num_args = 1..)]
        tag_specifications: Vec<String>,
    },
    /// `--resources vol-... snap-... --tags Key=k,Value=v ...`
    CreateTags {
        #[arg(long, num_args = 1.., required = true)]
        resources: Vec<String>,
        #[arg(long, num_args = 1.., required = true)]
        tags: Vec<String>,
    },
    /// Without --tags, every tag of the resources goes.
    DeleteTags {
        #[arg(long, num_args = 1.., required = true)]
        resources: Vec<String>,
        /// `Key=k` (any value) or `Key=k,Value=v` (only that value).
        #[arg(long, num_args = 1..)]
        tags: Vec<String>,
    },
    DescribeTags {
        /// `Name=resource-id,Values=vol-...` (repeatable).
        #[arg(long, num_args = 1..)]
        filters: Vec<String>,
    },
    DeleteSnapshot {
        #[arg(long)]
        snapshot_id: String,
    },
    DescribeSnapshots {
        #[arg(long, num_args = 1..)]
        snapshot_ids: Vec<String>,
        /// `Name=volume-id,Values=vol-...` (repeatable), as in `aws ec2`.
        #[arg(long, num_args = 1..)]
        filters: Vec<String>,
    },
    CopySnapshot {
        #[arg(long)]
        source_snapshot_id: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        encrypted: bool,
        #[arg(long)]
        kms_key_id: Option<String>,
        #[arg(long, num_args = 1..)]
        tag_specifications: Vec<String>,
    },
    EnableFastSnapshotRestores {
        #[arg(long, num_args = 1..)]
        source_snapshot_ids: Vec<String>,
        #[arg(long, num_args = 1.., env = "EBS_AVAILABILITY_ZONE", default_value = "local-1a")]
        availability_zones: Vec<String>,
    },
    /// Copies a raw image into a volume through its NBD export.
    CopyImageToVolume(CopyArgs),
    /// Copies a volume into a raw image (sparse) through its NBD export.
    CopyVolumeToImage(CopyArgs),
}

#[derive(clap::Args)]
struct CopyArgs {
    /// Raw image file.
    #[arg(long)]
    image: PathBuf,
    /// NBD endpoint (`unix:/path` or `host:port`) from AttachVolume's NbdExport.
    #[arg(long)]
    endpoint: String,
    /// Export name from AttachVolume (`vol-.../token`).
    #[arg(long)]
    export_name: String,
    /// Print a JSON summary instead of a progress bar.
    #[arg(long)]
    json: bool,
}

/// Adds `key: value` to a request object when the value is set.
fn put<T: Into<Value>>(object: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        object.insert(key.to_string(), value.into());
    }
}

/// Parses `aws ec2` shorthand filters: `Name=status,Values=available,in-use`.
fn parse_filters(filters: &[String]) -> Result<Value> {
    let mut parsed = Vec::new();
    for filter in filters {
        let rest = filter.strip_prefix("Name=").with_context(|| {
            format!("filter {filter:?} must look like Name=status,Values=available")
        })?;
        let (name, values) = rest
            .split_once(",Values=")
            .with_context(|| format!("filter {filter:?} has no ,Values="))?;
        let values: Vec<&str> = values.split(',').collect();
        parsed.push(json!({"Name": name, "Values": values}));
    }
    Ok(Value::Array(parsed))
}

/// One tag in `aws ec2` shorthand: `Key=k,Value=v` (Value optional).
fn parse_tag(text: &str, value_required: bool) -> Result<Value> {
    let mut key = None;
    let mut value = None;
    for part in text.split(',') {
        if let Some(k) = part.strip_prefix("Key=") {
            key = Some(k);
        } else if let Some(v) = part.strip_prefix("Value=") {
            value = Some(v);
        } else {
            bail!("tag {text:?} must look like Key=k,Value=v");
        }
    }
    let key = key.with_context(|| format!("tag {text:?} has no Key="))?;
    Ok(match value {
        Some(value) => json!({"Key": key, "Value": value}),
        None if value_required => json!({"Key": key, "Value": ""}),
        None => json!({"Key": key}),
    })
}

/// `ResourceType=volume,Tags=[{Key=a,Value=b},{Key=c,Value=d}]`, or the JSON form.
fn parse_tag_specifications(specifications: &[String]) -> Result<Value> {
    let mut parsed = Vec::new();
    for text in specifications {
        if text.starts_with('{') || text.starts_with('[') {
            match serde_json::from_str(text)? {
                Value::Array(items) => parsed.extend(items),
                item => parsed.push(item),
            }
            continue;
        }
        let rest = text
            .strip_prefix("ResourceType=")
            .with_context(|| format!("{text:?} must start with ResourceType="))?;
        let (resource_type, tags) = rest
            .split_once(",Tags=[")
            .with_context(|| format!("{text:?} has no ,Tags=[...]"))?;
        let tags = tags
            .strip_suffix(']')
            .with_context(|| format!("{text:?}: Tags=[...] is not closed"))?;
        let tags = tags
            .trim_matches(|c| c == '{' || c == '}')
            .split("},{")
            .filter(|tag| !tag.is_empty())
            .map(|tag| parse_tag(tag, true))
            .collect::<Result<Vec<_>>>()?;
        parsed.push(json!({"ResourceType": resource_type, "Tags": tags}));
    }
    Ok(Value::Array(parsed))
}

fn api_request(command: &Command) -> Result<Option<(&'static str, Value)>> {
    let mut body = Map::new();
    let action = match command {
        Command::CreateVolume {
            size,
            volume_type,
            iops,
            throughput,
            availability_zone,
            snapshot_id,
            encrypted,
            kms_key_id,
            multi_attach_enabled,
            client_token,
            tag_specifications,
        } => {
            put(&mut body, "Size", *size);
            put(&mut body, "VolumeType", volume_type.clone());
            put(&mut body, "Iops", *iops);
            put(&mut body, "Throughput", *throughput);
            put(
                &mut body,
                "AvailabilityZone",
                Some(availability_zone.clone()),
            );
            put(&mut body, "SnapshotId", snapshot_id.clone());
            put(&mut body, "Encrypted", encrypted.then_some(true));
            put(&mut body, "KmsKeyId", kms_key_id.clone());
            put(
                &mut body,
                "MultiAttachEnabled",
                multi_attach_enabled.then_some(true),
            );
            put(&mut body, "ClientToken", client_token.clone());
            if !tag_specifications.is_empty() {
                body.insert(
                    "TagSpecifications".into(),
                    parse_tag_specifications(tag_specifications)?,
                );
            }
            "CreateVolume"
        }
        Command::DeleteVolume { volume_id } => {
            put(&mut body, "VolumeId", Some(volume_id.clone()));
            "DeleteVolume"
        }
        Command::DescribeVolumes {
            volume_ids,
            filters,
        } => {
            body.insert("VolumeIds".into(), json!(volume_ids));
            body.insert("Filters".into(), parse_filters(filters)?);
            "DescribeVolumes"
        }
        Command::ModifyVolume {
            volume_id,
            size,
            volume_type,
            iops,
            throughput,
        } => {
            put(&mut body, "VolumeId", Some(volume_id.clone()));
            put(&mut body, "Size", *size);
            put(&mut body, "VolumeType", volume_type.clone());
            put(&mut body, "Iops", *iops);
            put(&mut body, "Throughput", *throughput);
            "ModifyVolume"
        }
        Command::DescribeVolumesModifications {
            volume_ids,
            filters,
        } => {
            body.insert("VolumeIds".into(), json!(volume_ids));
            body.insert("Filters".into(), parse_filters(filters)?);
            "DescribeVolumesModifications"
        }
        Command::AttachVolume {
            volume_id,
            instance_id,
            device,
            instance_availability_zone,
            read_only,
        } => {
            put(&mut body, "VolumeId", Some(volume_id.clone()));
            put(&mut body, "InstanceId", Some(instance_id.clone()));
            put(&mut body, "Device", device.clone());
            put(
                &mut body,
                "InstanceAvailabilityZone",
                Some(instance_availability_zone.clone()),
            );
            put(&mut body, "ReadOnly", read_only.then_some(true));
            "AttachVolume"
        }
        Command::DetachVolume {
            volume_id,
            instance_id,
            force,
        } => {
            put(&mut body, "VolumeId", Some(volume_id.clone()));
            put(&mut body, "InstanceId", instance_id.clone());
            put(&mut body, "Force", force.then_some(true));
            "DetachVolume"
        }
        Command::CreateSnapshot {
            volume_id,
            description,
            tag_specifications,
        } => {
            put(&mut body, "VolumeId", Some(volume_id.clone()));
            put(&mut body, "Description", description.clone());
            if !tag_specifications.is_empty() {
                body.insert(
                    "TagSpecifications".into(),
                    parse_tag_specifications(tag_specifications)?,
                );
            }
            "CreateSnapshot"
        }
        Command::CreateTags { resources, tags } => {
            body.insert("Resources".into(), json!(resources));
            let tags = tags
                .iter()
                .map(|tag| parse_tag(tag, true))
                .collect::<Result<Vec<_>>>()?;
            body.insert("Tags".into(), Value::Array(tags));
            "CreateTags"
        }
        Command::DeleteTags { resources, tags } => {
            body.insert("Resources".into(), json!(resources));
            if !tags.is_empty() {
                let tags = tags
                    .iter()
                    .map(|tag| parse_tag(tag, false))
                    .collect::<Result<Vec<_>>>()?;
                body.insert("Tags".into(), Value::Array(tags));
            }
            "DeleteTags"
        }
        Command::DescribeTags { filters } => {
            body.insert("Filters".into(), parse_filters(filters)?);
            "DescribeTags"
        }
        Command::DeleteSnapshot { snapshot_id } => {
            put(&mut body, "SnapshotId", Some(snapshot_id.clone()));
            "DeleteSnapshot"
        }
        Command::DescribeSnapshots {
            snapshot_ids,
            filters,
        } => {
            body.insert("SnapshotIds".into(), json!(snapshot_ids));
            body.insert("Filters".into(), parse_filters(filters)?);
            "DescribeSnapshots"
        }
        Command::CopySnapshot {
            source_snapshot_id,
            description,
            encrypted,
            kms_key_id,
            tag_specifications,
        } => {
            if !tag_specifications.is_empty() {
                body.insert(
                    "TagSpecifications".into(),
                    parse_tag_specifications(tag_specifications)?,
                );
            }
            put(
                &mut body,
                "SourceSnapshotId",
                Some(source_snapshot_id.clone()),
            );
            put(&mut body, "Description", description.clone());
            put(&mut body, "Encrypted", encrypted.then_some(true));
            put(&mut body, "KmsKeyId", kms_key_id.clone());
            "CopySnapshot"
        }
        Command::EnableFastSnapshotRestores {
            source_snapshot_ids,
            availability_zones,
        } => {
            body.insert("SourceSnapshotIds".into(), json!(source_snapshot_ids));
            body.insert("AvailabilityZones".into(), json!(availability_zones));
            "EnableFastSnapshotRestores"
        }
        Command::CopyImageToVolume(_) | Command::CopyVolumeToImage(_) => return Ok(None),
    };
    Ok(Some((action, Value::Object(body))))
}

/// Chunk size and queue depth for copies: 1 MiB requests, 8 in flight.
const COPY_CHUNK: usize = 1 << 20;
const COPY_DEPTH: usize = 8;

/// Whether `data` is all zeros; compares whole pages (memcmp) rather than bytes.
fn is_all_zero(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len())
        .all(|page| page == &ZEROS[..page.len()])
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn connect(args: &CopyArgs) -> Result<NbdClient> {
    let endpoint: NbdEndpoint = args.endpoint.parse()?;
    let (volume, token) = match args.export_name.split_once('/') {
        Some((volume, token)) => (volume, Some(token)),
        None => (args.export_name.as_str(), None),
    };
    NbdClient::connect(&endpoint, volume, token)
        .with_context(|| format!("connect to {}", args.endpoint))
}

fn wait_oldest(in_flight: &mut VecDeque<PendingRequest>) -> Result<()> {
    if let Some(request) = in_flight.pop_front() {
        request.wait()?;
    }
    Ok(())
}

fn copy_image_to_volume(args: &CopyArgs) -> Result<Value> {
    let client = connect(args)?;
    let mut image =
        File::open(&args.image).with_context(|| format!("open {}", args.image.display()))?;
    let length = image.metadata()?.len();
    if length > client.size() {
        bail!(
            "image is {length} bytes but the volume only {}",
            client.size()
        );
    }
    let started = Instant::now();
    let bar = progress_bar(length, args.json);
    let mut in_flight = VecDeque::new();
    let mut offset = 0u64;
    let mut zero_bytes = 0u64;
    let mut chunk = vec![0u8; COPY_CHUNK];
    while offset < length {
        let size = (length - offset).min(COPY_CHUNK as u64) as usize;
        image.read_exact(&mut chunk[..size])?;
        if in_flight.len() >= COPY_DEPTH {
            wait_oldest(&mut in_flight)?;
        }
        if is_all_zero(&chunk[..size]) {
            // Zeros become holes in the thin volume instead of stored data.
            client.write_zeroes(offset, size as u64, true)?;
            zero_bytes += size as u64;
        } else {
            in_flight.push_back(client.submit_write(offset, &chunk[..size], false)?);
        }
        offset += size as u64;
        bar.set_position(offset);
    }
    while !in_flight.is_empty() {
        wait_oldest(&mut in_flight)?;
    }
    client.flush()?;
    bar.finish_and_clear();
    client.disconnect()?;
    Ok(
        json!({"BytesCopied": length, "ZeroBytesSkipped": zero_bytes, "Seconds": started.elapsed().as_secs_f64()}),
    )
}

fn copy_volume_to_image(args: &CopyArgs) -> Result<Value> {
    let client = connect(args)?;
    let length = client.size();
    let mut image = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.image)
        .with_context(|| format!("create {}", args.image.display()))?;
    image.set_len(length)?;
    let started = Instant::now();
    let bar = progress_bar(length, args.json);
    let mut in_flight: VecDeque<(u64, PendingRequest)> = VecDeque::new();
    let mut next = 0u64;
    let mut zero_bytes = 0u64;
    while next < length || !in_flight.is_empty() {
        while next < length && in_flight.len() < COPY_DEPTH {
            let size = (length - next).min(COPY_CHUNK as u64) as u32;
            in_flight.push_back((next, client.submit_read(next, size)?));
            next += u64::from(size);
        }
        if let Some((offset, request)) = in_flight.pop_front() {
            let data = request.wait()?;
            if is_all_zero(&data) {
                zero_bytes += data.len() as u64; // left as a hole in the sparse image
            } else {
                image.seek(SeekFrom::Start(offset))?;
                image.write_all(&data)?;
            }
            bar.set_position(offset + data.len() as u64);
        }
    }
    image.sync_all()?;
    bar.finish_and_clear();
    client.disconnect()?;
    Ok(
        json!({"BytesCopied": length, "ZeroBytesSkipped": zero_bytes, "Seconds": started.elapsed().as_secs_f64()}),
    )
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let output = match &cli.command {
        Command::CopyImageToVolume(args) => copy_image_to_volume(args)?,
        Command::CopyVolumeToImage(args) => copy_volume_to_image(args)?,
        command => {
            let target = match &cli.api_url {
                Some(address) => ApiTarget::Tcp(
                    address
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string(),
                ),
                None => ApiTarget::Unix(cli.api_sock.clone()),
            };
            let Some((action, body)) = api_request(command)? else {
                unreachable!("copy verbs handled above")
            };
            ApiClient::new(target).call(action, &body)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
