//! RunInstances: image and permission checks, volumes from the image's snapshots,
//! an address on the bridge, the metadata record, and a supervisor per instance.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Value};

use super::client_token::{self, TokenOutcome};
use super::enhanced::{self, EnhancedInputs, EniKind, InterfaceChoice};
use super::{network, supervisor, AttachedVolume, LaunchState, Launcher, ZONE};
use crate::cpu_credits::{Clock, CreditAccount, CreditMode, SystemClock};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{new_id, ResourceKind};
use crate::images::{BlockDeviceMapping, BootSource, Image};
use crate::instance_types;
use crate::instances::{
    resolve_launch_mappings, CpuOptions, EbsInstanceBlockDevice, HibernationOptions, Instance,
    InstanceBlockDeviceMapping, InstanceNetworkInterface, InstanceRecord, InstanceStateName,
    MetadataOptions, MetadataOptionsRequest, NetworkInterfaceAttachment, NetworkInterfaceRequest,
    Placement, PlacementRequest, ShutdownBehavior,
};
use crate::user_data::UserData;

/// The name `run-instances` without `--image-id` looks for (scripts/default-ami.sh).
pub const DEFAULT_IMAGE_NAME: &str = "nitro-default";
/// EC2 launches at most this many per call without a limit increase (per type family
/// limits are vCPU-based on EC2; a flat cap keeps one host sane).
const MAX_COUNT: u32 = 20;

#[derive(Debug, Default, Clone)]
pub struct RunRequest {
    pub image_id: Option<String>,
    pub instance_type: Option<String>,
    pub count: u32,
    pub user_data: Option<UserData>,
    pub key_name: Option<String>,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub metadata_options: Option<MetadataOptionsRequest>,
    pub placement: Option<PlacementRequest>,
    pub shutdown_behavior: ShutdownBehavior,
    /// `--hibernation-options Configured=true`.
    pub hibernation: bool,
    /// `--network-interfaces`: the primary ENI only (DeviceIndex 0): its
    /// `InterfaceType` (`interface`, or this host's `enhanced`/`emulated`),
    /// `Description`, `PrivateIpAddress`.
    pub network_interfaces: Vec<NetworkInterfaceRequest>,
    /// `--credit-specification CpuCredits=standard|unlimited` (T types; default
    /// unlimited, as EC2 launches T3/T3a).
    pub credit_specification: Option<CreditMode>,
    /// `--client-token`: idempotency (client_token.rs).
    pub client_token: Option<String>,
}

/// What the launch asks of the primary ENI.
#[derive(Debug, Default, Clone)]
struct EniRequest {
    choice: InterfaceChoice,
    description: String,
    private_ip: Option<Ipv4Addr>,
}

fn eni_request(request: &RunRequest) -> Result<EniRequest, Ec2Error> {
    crate::instances::validate_network_interfaces(&request.network_interfaces)?;
    let unsupported = |what: &str| {
        Ec2Error::new(
            ErrorCode::Unsupported,
            format!("The requested configuration is currently not supported: {what}"),
        )
    };
    if request.network_interfaces.len() > 1 {
        return Err(unsupported("more than one network interface"));
    }
    let Some(primary) = request.network_interfaces.first() else {
        return Ok(EniRequest::default());
    };
    if primary.network_interface_id.is_some() {
        return Err(unsupported("attaching an existing network interface"));
    }
    let private_ip = match &primary.private_ip_address {
        Some(text) => {
            if request.count > 1 {
                return Err(Ec2Error::combination(
                    "A private IP address cannot be given when launching more than one instance",
                ));
            }
            // Validated above as an IPv4 address.
            Some(
                text.parse()
                    .map_err(|_| Ec2Error::invalid_value(text.clone()))?,
            )
        }
        None => None,
    };
    Ok(EniRequest {
        choice: InterfaceChoice::parse(primary.interface_type.as_deref())?,
        description: primary.description.clone().unwrap_or_default(),
        private_ip,
    })
}

impl Launcher {
    /// The image `run-instances` boots when none is named.
    pub fn default_image(&self) -> Result<Image, Ec2Error> {
        let request = crate::images::DescribeImagesRequest {
            owners: vec!["self".into()],
            filters: vec![crate::filters::Filter {
                name: "name".into(),
                values: vec![DEFAULT_IMAGE_NAME.into()],
            }],
            ..Default::default()
        };
        self.images()
            .describe(&request, &self.account)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Ec2Error::new(
                    ErrorCode::InvalidAmiIdNotFound,
                    format!(
                        "No image named '{DEFAULT_IMAGE_NAME}': build and import it with \
                         scripts/default-ami.sh, or pass --image-id"
                    ),
                )
            })
    }

    pub fn run_instances(&self, request: &RunRequest) -> Result<Value, Ec2Error> {
        let Some(token) = &request.client_token else {
            return self.launch_reservation(request, &new_id(ResourceKind::Reservation));
        };
        // Every parameter but the token, in a canonical text.
        let parameters = format!(
            "{:?}",
            RunRequest {
                client_token: None,
                ..request.clone()
            }
        );
        match self.claim_client_token(token, &client_token::fingerprint(&parameters))? {
            TokenOutcome::Replay(reply) => Ok(reply),
            TokenOutcome::Launch { reservation_id } => {
                let launched = self.launch_reservation(request, &reservation_id);
                if let Err(e) = self.settle_client_token(token) {
                    log::warn!("client token {token}: {e}");
                }
                launched
            }
        }
    }

    fn launch_reservation(
        &self,
        request: &RunRequest,
        reservation_id: &str,
    ) -> Result<Value, Ec2Error> {
        if request.count == 0 || request.count > MAX_COUNT {
            return Err(Ec2Error::new(
                if request.count == 0 {
                    ErrorCode::InvalidParameterValue
                } else {
                    ErrorCode::InstanceLimitExceeded
                },
                format!(
                    "You have requested {} instances; between 1 and {MAX_COUNT} can be launched at once",
                    request.count
                ),
            ));
        }
        let image = match &request.image_id {
            Some(id) => {
                crate::ids::validate(ResourceKind::Image, id)?;
                self.images().check_launch_permission(id, &self.account)?
            }
            None => self.default_image()?,
        };
        let type_name = request
            .instance_type
            .as_deref()
            .unwrap_or(instance_types::DEFAULT_INSTANCE_TYPE);
        let itype = instance_types::lookup(type_name)?;
        let placement = Placement::resolve(request.placement.as_ref(), &[ZONE])?;
        let metadata = MetadataOptions::resolve(request.metadata_options.as_ref(), &image)?;
        let ops = self.snapshot_ops();
        let mappings = resolve_launch_mappings(&image, &request.block_device_mappings, &ops)?;
        if request.hibernation {
            crate::instances::check_hibernation(
                &mappings,
                &image.root_device_name,
                itype.memory_mib,
            )?;
        }
        // Kernel images: the kernel object's parameters; root-volume images read
        // theirs from the volume at each start (boot_volume.rs).
        let (kernel_id, ramdisk_id, kernel_parameters) = match &image.boot_source {
            BootSource::Kernel {
                kernel_id,
                ramdisk_id,
            } => {
                let kernel = self.kernels().kernel_meta(kernel_id)?;
                (
                    kernel_id.clone(),
                    ramdisk_id.clone(),
                    kernel.kernel_parameters,
                )
            }
            BootSource::RootVolume => (String::new(), None, String::new()),
        };
        if request.credit_specification.is_some() && itype.burstable.is_none() {
            return Err(Ec2Error::combination(format!(
                "The parameter CreditSpecification is not supported for the {type_name} \
                 instance type"
            )));
        }
        let eni = eni_request(request)?;
        let vf_pool = enhanced::configured_pool(&self.paths);
        if eni.choice == InterfaceChoice::Enhanced {
            // All or nothing: enough VFs for the whole request before anything exists.
            let _lock = self.paths.lock()?;
            let free = match &vf_pool {
                Some(dir) => enhanced::free_vfs(dir, &self.instances().list()?),
                None => Ok(0),
            };
            let kind = enhanced::decide(
                eni.choice,
                &EnhancedInputs {
                    image_id: &image.image_id,
                    image_ena: image.ena_support,
                    image_sriov: image.sriov_net_support.as_deref(),
                    instance_type: type_name,
                    type_supports: itype.supports_enhanced_networking(),
                    hibernation: request.hibernation,
                    pool: vf_pool.as_deref(),
                    free_vfs: free.map(|n| usize::from(n >= request.count as usize)),
                },
            )?;
            debug_assert_eq!(kind, EniKind::Enhanced);
        }
        let mut launched = Vec::new();
        for index in 0..request.count {
            let record = self.launch_one(
                request,
                &image,
                &mappings,
                LaunchPlan {
                    reservation_id,
                    index,
                    type_name,
                    vcpus: itype.vcpus,
                    mem_mib: itype.memory_mib,
                    placement: &placement,
                    metadata: &metadata,
                    kernel_id: &kernel_id,
                    ramdisk_id: ramdisk_id.as_deref(),
                    kernel_parameters: &kernel_parameters,
                    eni: &eni,
                    vf_pool: vf_pool.as_deref(),
                    type_supports_enhanced: itype.supports_enhanced_networking(),
                    credits: CreditAccount::new(
                        itype,
                        request
                            .credit_specification
                            .unwrap_or(CreditMode::Unlimited),
                        SystemClock.now(),
                    ),
                },
            )?;
            supervisor::spawn(&self.paths, &record.instance.instance_id)?;
            launched.push(record.instance);
        }
        Ok(json!({
            "Groups": [],
            "Instances": launched,
            "OwnerId": self.account,
            "ReservationId": reservation_id,
        }))
    }

    fn launch_one(
        &self,
        request: &RunRequest,
        image: &Image,
        mappings: &[BlockDeviceMapping],
        plan: LaunchPlan,
    ) -> Result<InstanceRecord, Ec2Error> {
        let instance_id = new_id(ResourceKind::Instance);
        let _lock = self.paths.lock()?;
        let in_use: Vec<Ipv4Addr> = self
            .instances()
            .list()?
            .iter()
            .filter(|r| r.state() != InstanceStateName::Terminated)
            .filter_map(|r| r.instance.private_ip_address.as_deref()?.parse().ok())
            .collect();
        let ip = match plan.eni.private_ip {
            Some(ip) => network::check_requested_ip(ip, &in_use)?,
            None => network::allocate_ip(&in_use)?,
        };
        let mac = network::mac_for(ip);
        // Decided under the lock, before any volume exists: a refusal leaves nothing.
        let free_vfs = match plan.vf_pool {
            Some(dir) => enhanced::free_vfs(dir, &self.instances().list()?),
            None => Ok(0),
        };
        let eni = enhanced::decide(
            plan.eni.choice,
            &EnhancedInputs {
                image_id: &image.image_id,
                image_ena: image.ena_support,
                image_sriov: image.sriov_net_support.as_deref(),
                instance_type: plan.type_name,
                type_supports: plan.type_supports_enhanced,
                hibernation: request.hibernation,
                pool: plan.vf_pool,
                free_vfs,
            },
        )?;
        let now = super::iso_now();
        let volumes = self.create_volumes(&instance_id, image, mappings)?;
        let octets = ip.octets();
        let dns = format!(
            "ip-{}-{}-{}-{}.ec2.internal",
            octets[0], octets[1], octets[2], octets[3]
        );
        let instance = Instance {
            instance_id: instance_id.clone(),
            image_id: image.image_id.clone(),
            instance_type: plan.type_name.to_string(),
            state: InstanceStateName::Pending.into(),
            state_reason: None,
            state_transition_reason: String::new(),
            launch_time: now.clone(),
            ami_launch_index: plan.index,
            placement: plan.placement.clone(),
            private_ip_address: Some(ip.to_string()),
            private_dns_name: dns,
            public_ip_address: None,
            key_name: request.key_name.clone(),
            architecture: image.architecture.clone(),
            root_device_name: image.root_device_name.clone(),
            root_device_type: "ebs".into(),
            block_device_mappings: volumes
                .iter()
                .map(|v| InstanceBlockDeviceMapping {
                    device_name: v.device_name.clone(),
                    ebs: EbsInstanceBlockDevice {
                        volume_id: v.volume_id.clone(),
                        status: "attached".into(),
                        attach_time: now.clone(),
                        delete_on_termination: v.delete_on_termination,
                    },
                })
                .collect(),
            network_interfaces: vec![InstanceNetworkInterface {
                network_interface_id: new_id(ResourceKind::NetworkInterface),
                mac_address: mac.clone(),
                private_ip_address: Some(ip.to_string()),
                description: plan.eni.description.clone(),
                status: "in-use".into(),
                interface_type: "interface".into(),
                source_dest_check: true,
                attachment: NetworkInterfaceAttachment {
                    attachment_id: new_id(ResourceKind::NetworkInterfaceAttachment),
                    device_index: 0,
                    network_card_index: 0,
                    status: "attached".into(),
                    attach_time: now.clone(),
                    delete_on_termination: true,
                },
            }],
            metadata_options: plan.metadata.clone(),
            // Whether the instance has enhanced networking (ENA) enabled, as EC2's
            // attribute says; an emulated ENI is the instance without it.
            ena_support: eni == EniKind::Enhanced,
            sriov_net_support: image.sriov_net_support.clone(),
            hibernation_options: HibernationOptions {
                configured: request.hibernation,
            },
            cpu_options: CpuOptions {
                core_count: plan.vcpus.div_ceil(2).max(1),
                threads_per_core: if plan.vcpus > 1 { 2 } else { 1 },
            },
            ebs_optimized: true,
            virtualization_type: image.virtualization_type.clone(),
            boot_mode: image.boot_mode,
            platform_details: image.platform_details.clone(),
            usage_operation: image.usage_operation.clone(),
            client_token: request.client_token.clone(),
            tags: Vec::new(),
        };
        let mut record = InstanceRecord {
            instance,
            reservation_id: plan.reservation_id.to_string(),
            owner_id: self.account.clone(),
            user_data: request.user_data.as_ref().map(UserData::to_base64),
            shutdown_behavior: request.shutdown_behavior,
            credit_specification: plan.credits.as_ref().map(CreditAccount::mode),
            cpu_credits: plan.credits.clone(),
            launcher: Value::Null,
        };
        LaunchState {
            kernel_id: plan.kernel_id.to_string(),
            ramdisk_id: plan.ramdisk_id.map(str::to_string),
            kernel_parameters: plan.kernel_parameters.to_string(),
            boot_from_volume: plan.kernel_id.is_empty(),
            vcpus: plan.vcpus,
            mem_mib: plan.mem_mib,
            ip: ip.to_string(),
            mac,
            tap: network::tap_name(&instance_id),
            eni,
            vf_pool: (eni == EniKind::Enhanced)
                .then(|| plan.vf_pool.map(Path::to_path_buf))
                .flatten(),
            volumes,
            ..Default::default()
        }
        .store(&mut record);
        self.instances().put(&record)?;
        Ok(record)
    }

    /// One volume per EBS mapping, root first, attached to the instance.
    fn create_volumes(
        &self,
        instance_id: &str,
        image: &Image,
        mappings: &[BlockDeviceMapping],
    ) -> Result<Vec<AttachedVolume>, Ec2Error> {
        let mut ordered: Vec<&BlockDeviceMapping> =
            mappings.iter().filter(|m| m.ebs.is_some()).collect();
        ordered.sort_by_key(|m| {
            (
                m.device_name != image.root_device_name,
                m.device_name.clone(),
            )
        });
        let mut volumes: Vec<AttachedVolume> = Vec::new();
        for mapping in ordered {
            let Some(ebs) = &mapping.ebs else { continue };
            let mut body = json!({
                "AvailabilityZone": ZONE,
                "VolumeType": ebs.volume_type.as_deref().unwrap_or("gp3"),
            });
            if let Some(size) = ebs.volume_size {
                body["Size"] = json!(size);
            }
            if let Some(snapshot) = &ebs.snapshot_id {
                body["SnapshotId"] = json!(snapshot);
            }
            if let Some(iops) = ebs.iops {
                body["Iops"] = json!(iops);
            }
            if let Some(throughput) = ebs.throughput {
                body["Throughput"] = json!(throughput);
            }
            if ebs.encrypted == Some(true) {
                body["Encrypted"] = json!(true);
            }
            if let Some(key) = &ebs.kms_key_id {
                body["KmsKeyId"] = json!(key);
            }
            let created = self.ebs().create_volume(&body).and_then(|volume_id| {
                let export = self
                    .ebs()
                    .attach(&volume_id, instance_id, &mapping.device_name)?;
                Ok(AttachedVolume {
                    device_name: mapping.device_name.clone(),
                    volume_id,
                    export,
                    delete_on_termination: ebs.delete_on_termination.unwrap_or(true),
                })
            });
            match created {
                Ok(volume) => volumes.push(volume),
                Err(e) => {
                    // Leave nothing behind from a launch that failed half way.
                    for v in &volumes {
                        let _ = self.ebs().detach(&v.volume_id);
                        let _ = self.ebs().delete_volume(&v.volume_id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(volumes)
    }
}

struct LaunchPlan<'a> {
    reservation_id: &'a str,
    index: u32,
    type_name: &'a str,
    vcpus: u32,
    mem_mib: u64,
    placement: &'a Placement,
    metadata: &'a MetadataOptions,
    kernel_id: &'a str,
    ramdisk_id: Option<&'a str>,
    kernel_parameters: &'a str,
    eni: &'a EniRequest,
    vf_pool: Option<&'a Path>,
    type_supports_enhanced: bool,
    credits: Option<CreditAccount>,
}
