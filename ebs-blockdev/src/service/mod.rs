//! The block service: carries control-plane decisions out on the storage engine, persists
//! the control state, and resolves NBD export names to attached volumes.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

mod credits;
mod crypto;
pub mod direct;
mod modify;
mod snapshots;
mod tags;

use snapshots::Fill;

use crate::control::snapshot::SnapshotTable;
use crate::control::volume::EXPORT_TOKEN_SEPARATOR;
use crate::control::{
    AttachVolumeRequest, ControlError, CreateVolumeRequest, DescribeVolumesRequest,
    DetachVolumeRequest, Volume, VolumeAttachment, VolumeState, VolumeTable,
};
use crate::crypto::LocalKms;
use crate::engine::durable::replace_file_atomically;
use crate::engine::{BlockStore, EngineError};
use crate::nbd::{Export, ExportProvider, ExportRefusal, IoDirection, IoThrottle};
use crate::qos::{Clock, FakeClock, MonotonicClock, QosSnapshot, SystemClock, VolumeQos};
use crate::snapshot::SnapshotStorage;

const CONTROL_FILE: &str = "control.json";
const VOLUMES_DIR: &str = "volumes";

impl From<EngineError> for ControlError {
    fn from(error: EngineError) -> Self {
        ControlError::Internal(error.to_string())
    }
}

/// Per-volume I/O counters, exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct VolumeCounters {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
}

/// Counts each I/O and holds it until the volume's QoS buckets admit it.
struct VolumeThrottle {
    counters: Arc<VolumeCounters>,
    qos: Arc<VolumeQos>,
}

impl IoThrottle for VolumeThrottle {
    fn admit(&self, direction: IoDirection, offset: u64, length: u64) {
        self.qos.admit_request(direction, offset, length);
        let (ops, bytes) = match direction {
            IoDirection::Read => (&self.counters.read_ops, &self.counters.read_bytes),
            IoDirection::Write => (&self.counters.write_ops, &self.counters.write_bytes),
        };
        ops.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length, Ordering::Relaxed);
    }
}

struct OpenVolume {
    store: Arc<BlockStore>,
    counters: Arc<VolumeCounters>,
    qos: Arc<VolumeQos>,
    /// QoS-counted I/Os when the credit balances were last saved.
    credits_saved_at_ios: AtomicU64,
    /// Per attached instance: set on detach so its NBD connections stop serving.
    revocations: HashMap<String, Arc<AtomicBool>>,
}

struct ServiceState {
    table: VolumeTable,
    snapshots: SnapshotTable,
    open: HashMap<String, OpenVolume>,
    /// Snapshots being written through the EBS direct APIs.
    direct_uploads: HashMap<String, direct::DirectUpload>,
}

/// What control.json holds.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ControlFile {
    volumes: VolumeTable,
    #[serde(default)]
    snapshots: SnapshotTable,
}

/// How consumers reach the NBD export (reported by AttachVolume).
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    pub nbd_endpoints: Vec<String>,
    /// Object store for snapshots: a directory, or `s3://bucket[/prefix]` (credentials
    /// and endpoint from AWS_* variables). Default: DATA_DIR/objects.
    pub snapshot_store: Option<String>,
    /// The local KMS key file (mode 0600). Default: DATA_DIR/kms-keys.json.
    pub kms_key_file: Option<PathBuf>,
    /// For tests: the control plane's wall clock (snapshot timeouts, modification phases
    /// and cooldowns) starts at the real time and then moves only through
    /// [`Service::advance_test_clock`], so hours can pass in a test without waiting.
    pub test_clock: bool,
    /// Time between the starts of two modifications of one volume (default: EC2's six
    /// hours).
    pub modification_cooldown: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NbdExportInfo {
    /// `<volume-id>/<attachment-token>`: the secret that proves the attachment.
    pub export_name: String,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttachVolumeResponse {
    #[serde(flatten)]
    pub attachment: VolumeAttachment,
    pub nbd_export: NbdExportInfo,
}

/// A snapshot of one volume's metrics.
#[derive(Debug, Clone)]
pub struct VolumeMetrics {
    pub volume_id: String,
    pub volume_type: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub qos: QosSnapshot,
    /// Blocks of a volume made from a snapshot that are not local yet.
    pub blocks_to_hydrate: u64,
}

/// One Prometheus sample of a volume.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
    pub value: f64,
}

impl VolumeMetrics {
    /// The samples of every metric family, in a fixed order.
    pub fn samples(&self) -> Vec<MetricSample> {
        let sample = |name, kind, help, value: u64| MetricSample {
            name,
            kind,
            help,
            value: value as f64,
        };
        vec![
            sample(
                "ebs_volume_size_bytes",
                "gauge",
                "Provisioned size of the volume.",
                self.size_bytes,
            ),
            sample(
                "ebs_volume_allocated_bytes",
                "gauge",
                "Bytes in allocated 512 KiB blocks (thin provisioning).",
                self.allocated_bytes,
            ),
            sample(
                "ebs_volume_read_ops_total",
                "counter",
                "READ requests served.",
                self.read_ops,
            ),
            sample(
                "ebs_volume_read_bytes_total",
                "counter",
                "Bytes read.",
                self.read_bytes,
            ),
            sample(
                "ebs_volume_write_ops_total",
                "counter",
                "WRITE requests served.",
                self.write_ops,
            ),
            sample(
                "ebs_volume_write_bytes_total",
                "counter",
                "Bytes written.",
                self.write_bytes,
            ),
            sample(
                "ebs_volume_counted_ios_total",
                "counter",
                "I/Os as EBS counts them (256 KiB SSD, 1 MiB HDD, sequential merged).",
                self.qos.counted_ios,
            ),
            MetricSample {
                name: "ebs_volume_burst_balance_percent",
                kind: "gauge",
                help: "Credit bucket fill (EBS BurstBalance); 100 for types without credits.",
                value: self.qos.burst_balance_percent,
            },
            MetricSample {
                name: "ebs_volume_credit_balance",
                kind: "gauge",
                help: "I/O credits (gp2, standard) or throughput credits in MiB (st1, sc1); NaN for other types.",
                value: self
                    .qos
                    .io_credit_balance
                    .or(self.qos.throughput_credit_balance_mib)
                    .unwrap_or(f64::NAN),
            },
            MetricSample {
                name: "ebs_volume_throttled_seconds_total",
                kind: "counter",
                help: "Time requests spent waiting for QoS tokens.",
                value: self.qos.throttled_seconds,
            },
            MetricSample {
                name: "ebs_volume_iops_limit",
                kind: "gauge",
                help: "IOPS ceiling in force (burst rate for credit types; between the old and new values while a modification is optimizing).",
                value: self.qos.iops_limit,
            },
            MetricSample {
                name: "ebs_volume_throughput_limit_mibps",
                kind: "gauge",
                help: "Throughput ceiling in force, MiB/s.",
                value: self.qos.throughput_limit_mibps,
            },
            sample(
                "ebs_volume_blocks_to_hydrate",
                "gauge",
                "512 KiB blocks still to be fetched from the source snapshot.",
                self.blocks_to_hydrate,
            ),
        ]
    }
}

pub struct Service {
    config: ServiceConfig,
    /// Monotonic time for QoS buckets.
    clock: Arc<dyn Clock>,
    /// Wall-clock time since the Unix epoch for deadlines that outlive a restart.
    wall: Arc<dyn Clock>,
    test_clock: Option<Arc<FakeClock>>,
    /// When credit balances were last saved (see `credits`).
    credits_saved: Mutex<std::time::Instant>,
    locks_refreshed: Mutex<std::time::Instant>,
    storage: Arc<SnapshotStorage>,
    kms: LocalKms,
    state: Mutex<ServiceState>,
}

fn new_qos(
    volume: &Volume,
    modification: Option<&crate::control::ModificationRecord>,
    clock: &Arc<dyn Clock>,
) -> Result<Arc<VolumeQos>, ControlError> {
    let policy = modify::qos_policy(volume, modification)?;
    Ok(Arc::new(VolumeQos::new(policy, Arc::clone(clock))))
}

fn io_error(context: &str) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |error| ControlError::Internal(format!("{context}: {error}"))
}

impl Service {
    /// Opens (or initialises) the data directory and every volume in it.
    pub fn open(config: ServiceConfig) -> Result<Arc<Self>, ControlError> {
        fs::create_dir_all(config.data_dir.join(VOLUMES_DIR))
            .map_err(io_error("create data directory"))?;
        let control_path = config.data_dir.join(CONTROL_FILE);
        let ControlFile {
            volumes: mut table,
            mut snapshots,
        } = match fs::read(&control_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                ControlError::Internal(format!("{} is corrupt: {error}", control_path.display()))
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => ControlFile::default(),
            Err(error) => return Err(io_error("read control state")(error)),
        };
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let test_clock = config
            .test_clock
            .then(|| Arc::new(FakeClock::starting_at(SystemClock.now())));
        let wall: Arc<dyn Clock> = match &test_clock {
            Some(fake) => Arc::clone(fake) as Arc<dyn Clock>,
            None => Arc::new(SystemClock),
        };
        let location = config
            .snapshot_store
            .clone()
            .unwrap_or_else(|| config.data_dir.join("objects").display().to_string());
        let storage = Arc::new(
            SnapshotStorage::open(&location)
                .map_err(|error| ControlError::Internal(error.to_string()))?,
        );
        snapshots::fail_interrupted_snapshots(&mut snapshots);
        let kms_path = config
            .kms_key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("kms-keys.json"));
        let kms = LocalKms::open(&kms_path)?;
        let mut to_fill = Vec::new();
        let mut open = HashMap::new();
        let volumes: Vec<Volume> = table.all().cloned().collect();
        for volume in volumes {
            let directory = config.data_dir.join(VOLUMES_DIR).join(&volume.volume_id);
            match volume.state {
                VolumeState::Deleting => {
                    BlockStore::destroy(&directory)?;
                    table.finish_delete(&volume.volume_id)?;
                }
                VolumeState::Creating => {
                    log::warn!(
                        "{}: creation was interrupted; marking it error",
                        volume.volume_id
                    );
                    table.set_state(&volume.volume_id, VolumeState::Error)?;
                }
                VolumeState::Available | VolumeState::InUse => match BlockStore::open(&directory) {
                    Ok(store) => {
                        let store = Arc::new(store);
                        if let Some(wrapped) = table.wrapped_data_key(&volume.volume_id)? {
                            let (_, plaintext) = kms.unwrap(&wrapped)?;
                            store.set_cipher(Some(crypto::cipher_from(&plaintext)?));
                        }
                        if snapshots::reattach_source(&store, &directory, &storage)? {
                            to_fill.push((
                                Arc::clone(&store),
                                directory.clone(),
                                volume.volume_id.clone(),
                            ));
                        }
                        // Attachments survive a restart: their consumers reconnect.
                        let revocations = volume
                            .attachments
                            .iter()
                            .map(|attachment| {
                                (
                                    attachment.instance_id.clone(),
                                    Arc::new(AtomicBool::new(false)),
                                )
                            })
                            .collect();
                        let qos = new_qos(&volume, table.modification(&volume.volume_id)?, &clock)?;
                        credits::restore(&qos, &directory);
                        open.insert(
                            volume.volume_id.clone(),
                            OpenVolume {
                                store,
                                counters: Arc::default(),
                                qos,
                                credits_saved_at_ios: AtomicU64::new(0),
                                revocations,
                            },
                        );
                    }
                    Err(error) => {
                        log::error!("{}: cannot open its storage: {error}", volume.volume_id);
                        table.set_state(&volume.volume_id, VolumeState::Error)?;
                    }
                },
                VolumeState::Error | VolumeState::Deleted => {}
            }
        }
        let service = Arc::new(Service {
            config,
            clock,
            wall,
            test_clock,
            credits_saved: Mutex::new(std::time::Instant::now()),
            locks_refreshed: Mutex::new(std::time::Instant::now()),
            storage,
            kms,
            state: Mutex::new(ServiceState {
                table,
                snapshots,
                open,
                direct_uploads: HashMap::new(),
            }),
        });
        service.persist(&service.lock())?;
        service.publish_all_roots();
        for (store, directory, volume_id) in to_fill {
            snapshots::spawn_background_fill(store, directory, volume_id);
        }
        Ok(service)
    }

    /// Moves the test clock forward and runs the housekeeping that time triggers;
    /// returns the new time (seconds since the Unix epoch).
    pub fn advance_test_clock(&self, by: std::time::Duration) -> Result<f64, ControlError> {
        let clock = self.test_clock.as_ref().ok_or_else(|| {
            ControlError::Unsupported("ebsd was not started with --test-clock".into())
        })?;
        clock.advance(by);
        self.housekeeping();
        Ok(clock.now().as_secs_f64())
    }

    /// Work that time triggers: expiring direct-API uploads past their Timeout, moving
    /// volume modifications through their phases.
    pub fn housekeeping(&self) {
        self.expire_direct_uploads();
        self.advance_modifications();
        self.save_spent_credits();
        self.refresh_store_locks();
    }

    /// Keeps this daemon's object-store locks fresh (well within their lease).
    fn refresh_store_locks(&self) {
        let mut last = self
            .locks_refreshed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.elapsed() >= crate::snapshot::locks::LEASE / 10 {
            *last = std::time::Instant::now();
            self.storage.refresh_locks();
        }
    }

    /// Runs [`Service::housekeeping`] every second until the service is dropped.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let service = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("ebs-housekeeping".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                match service.upgrade() {
                    Some(service) => service.housekeeping(),
                    None => return,
                }
            });
        if let Err(error) = spawned {
            log::error!("cannot start the housekeeping thread: {error}");
        }
    }

    /// Publishes every local volume's roots (data directories from versions that kept
    /// them only locally, or a crash between a local write and its publication).
    fn publish_all_roots(&self) {
        let published = self
            .storage
            .lock_shared(&self.lock_owner())
            .map_err(ControlError::from)
            .and_then(|_shared| {
                let state = self.lock();
                for volume_id in state.open.keys() {
                    snapshots::publish_roots(
                        &self.storage,
                        volume_id,
                        &self.volume_directory(volume_id),
                    )?;
                }
                Ok(())
            });
        if let Err(error) = published {
            log::error!("cannot publish volume roots to the object store: {error}");
        }
    }

    fn kms(&self) -> Result<&LocalKms, ControlError> {
        Ok(&self.kms)
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, ServiceState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn volume_directory(&self, volume_id: &str) -> PathBuf {
        self.config.data_dir.join(VOLUMES_DIR).join(volume_id)
    }

    /// Writes the control state atomically (mode 0600: it holds attachment tokens).
    fn persist(&self, state: &ServiceState) -> Result<(), ControlError> {
        let file = ControlFile {
            volumes: state.table.clone(),
            snapshots: state.snapshots.clone(),
        };
        let encoded = serde_json::to_vec_pretty(&file)
            .map_err(|error| ControlError::Internal(format!("encode control state: {error}")))?;
        let path = self.config.data_dir.join(CONTROL_FILE);
        replace_file_atomically(&path, &encoded).map_err(io_error("persist control state"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(io_error("chmod control state"))
    }

    pub fn create_volume(&self, request: &CreateVolumeRequest) -> Result<Volume, ControlError> {
        let mut state = self.lock();
        if let Some(existing) = state.table.find_by_client_token(request)? {
            return Ok(existing);
        }
        let snapshot = match &request.snapshot_id {
            Some(snapshot_id) => Some(state.snapshots.completed(snapshot_id)?.clone()),
            None => None,
        };
        let snapshot_size = snapshot.as_ref().map(|snapshot| snapshot.volume_size);
        self.validate_volume_encryption(request, snapshot.as_ref())?;
        let volume = state.table.create(request, snapshot_size)?;
        self.persist(&state)?;
        let (store, fill, key) = match self.create_store(&state, &volume, request) {
            Ok(created) => created,
            Err(error) => {
                state
                    .table
                    .set_state(&volume.volume_id, VolumeState::Error)?;
                self.persist(&state)?;
                return Err(error);
            }
        };
        let volume = match key {
            Some((key_id, wrapped)) => {
                state
                    .table
                    .set_encryption(&volume.volume_id, &key_id, &wrapped)?
            }
            None => volume,
        };
        let store = Arc::new(store);
        let directory = self.volume_directory(&volume.volume_id);
        let qos = new_qos(&volume, None, &self.clock)?;
        state.open.insert(
            volume.volume_id.clone(),
            OpenVolume {
                store: Arc::clone(&store),
                counters: Arc::default(),
                qos,
                credits_saved_at_ios: AtomicU64::new(0),
                revocations: HashMap::new(),
            },
        );
        match fill {
            Fill::Nothing => {}
            Fill::InBackground => snapshots::spawn_background_fill(
                Arc::clone(&store),
                directory,
                volume.volume_id.clone(),
            ),
            Fill::BeforeAvailable => {
                // Stays `creating` (not attachable, not deletable) while every block is
                // fetched; the service lock is released so other requests go on.
                self.persist(&state)?;
                drop(state);
                let filled = store.hydrate_all(|_, _| {});
                state = self.lock();
                if let Err(error) = filled {
                    state
                        .table
                        .set_state(&volume.volume_id, VolumeState::Error)?;
                    self.persist(&state)?;
                    return Err(error.into());
                }
                let _ = fs::remove_file(directory.join(snapshots::SOURCE_BLOCKS));
            }
        }
        let volume = state
            .table
            .set_state(&volume.volume_id, VolumeState::Available)?;
        self.persist(&state)?;
        log::info!(
            "created {} ({} GiB {})",
            volume.volume_id,
            volume.size,
            volume.volume_type
        );
        Ok(volume)
    }

    pub fn delete_volume(&self, volume_id: &str) -> Result<(), ControlError> {
        let mut state = self.lock();
        state.table.begin_delete(volume_id)?;
        self.persist(&state)?;
        if let Some(open) = state.open.remove(volume_id) {
            // Connections were revoked at detach; close the store so its map is clean.
            if let Ok(store) = Arc::try_unwrap(open.store) {
                let _ = store.close();
            }
        }
        BlockStore::destroy(&self.volume_directory(volume_id))?;
        if let Err(error) = self.storage.delete_volume_roots(volume_id) {
            log::warn!("{volume_id}: cannot remove its published roots: {error}");
        }
        state.table.finish_delete(volume_id)?;
        self.persist(&state)?;
        log::info!("deleted {volume_id}");
        Ok(())
    }

    pub fn describe_volumes(
        &self,
        request: &DescribeVolumesRequest,
    ) -> Result<Vec<Volume>, ControlError> {
        self.lock().table.describe(request)
    }

    pub fn attach_volume(
        &self,
        request: &AttachVolumeRequest,
    ) -> Result<AttachVolumeResponse, ControlError> {
        let mut state = self.lock();
        let (attachment, export_name) = state.table.attach(request)?;
        if let Some(open) = state.open.get_mut(&request.volume_id) {
            open.revocations.insert(
                request.instance_id.clone(),
                Arc::new(AtomicBool::new(false)),
            );
        }
        self.persist(&state)?;
        log::info!("attached {} to {}", request.volume_id, request.instance_id);
        Ok(AttachVolumeResponse {
            attachment,
            nbd_export: NbdExportInfo {
                export_name,
                endpoints: self.config.nbd_endpoints.clone(),
            },
        })
    }

    pub fn detach_volume(
        &self,
        request: &DetachVolumeRequest,
    ) -> Result<VolumeAttachment, ControlError> {
        let mut state = self.lock();
        let attachment = state.table.detach(request)?;
        if let Some(open) = state.open.get_mut(&request.volume_id) {
            if let Some(revoked) = open.revocations.remove(&attachment.instance_id) {
                revoked.store(true, Ordering::Release);
            }
            // What the detached consumer wrote must not be lost by a later crash.
            open.store.flush()?;
        }
        self.persist(&state)?;
        log::info!(
            "detached {} from {}",
            request.volume_id,
            attachment.instance_id
        );
        Ok(attachment)
    }

    pub fn volume_metrics(&self) -> Vec<VolumeMetrics> {
        let state = self.lock();
        state
            .table
            .all()
            .filter_map(|volume| {
                let open = state.open.get(&volume.volume_id)?;
                let counters = &open.counters;
                Some(VolumeMetrics {
                    volume_id: volume.volume_id.clone(),
                    volume_type: volume.volume_type.to_string(),
                    size_bytes: open.store.size(),
                    allocated_bytes: open.store.allocated_bytes(),
                    read_ops: counters.read_ops.load(Ordering::Relaxed),
                    read_bytes: counters.read_bytes.load(Ordering::Relaxed),
                    write_ops: counters.write_ops.load(Ordering::Relaxed),
                    write_bytes: counters.write_bytes.load(Ordering::Relaxed),
                    qos: open.qos.snapshot(),
                    blocks_to_hydrate: open.store.non_local_blocks(),
                })
            })
            .collect()
    }

    /// Flushes and closes every volume (orderly shutdown, before the process exits).
    pub fn shutdown(&self) {
        let mut state = self.lock();
        for (volume_id, open) in state.open.drain() {
            if let Err(error) = open.store.shut_down() {
                log::error!("{volume_id}: close failed: {error}");
            }
            credits::save(&open.qos, open.store.directory());
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

impl ExportProvider for Service {
    fn open_export(&self, export_name: &str) -> Result<Export, ExportRefusal> {
        let state = self.lock();
        let volume_id = export_name
            .split(EXPORT_TOKEN_SEPARATOR)
            .next()
            .unwrap_or_default();
        let grant = state
            .table
            .authorize_export(export_name)
            .map_err(|error| match error {
                ControlError::AttachmentNotFound(message) => ExportRefusal::NotAuthorized(message),
                other => ExportRefusal::Unknown(format!("{}: {other}", other.code())),
            })?;
        let open = state.open.get(volume_id).ok_or_else(|| {
            ExportRefusal::Unknown(format!("volume {volume_id} has no storage open"))
        })?;
        let revoked = open
            .revocations
            .get(&grant.instance_id)
            .cloned()
            .ok_or_else(|| {
                ExportRefusal::NotAuthorized(format!("attachment of {volume_id} was revoked"))
            })?;
        Ok(Export {
            volume_id: grant.volume_id,
            store: Arc::clone(&open.store),
            read_only: grant.read_only,
            throttle: Some(Arc::new(VolumeThrottle {
                counters: Arc::clone(&open.counters),
                qos: Arc::clone(&open.qos),
            })),
            revoked,
        })
    }
}
