//! A persistent pool of VFs leased to instances.
//!
//! Every operation takes the pool's lock file (flock), reads the state file, acts and
//! writes the state back atomically, so any number of processes (one VMM per instance, the
//! CLI) share one pool without handing a VF out twice. A lease is written to the state file
//! before the VF is touched, so a crash at any point leaves a record from which the lease
//! can be undone; leases whose holder process is gone are released (reconciled) whenever
//! the pool is opened or leased from.

mod state;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::address::{MacAddress, PciAddress};
use crate::bind::{
    bind_driver, check_iommu_group_viable, check_iommu_group_viable_except, reset_function,
    vfio_group_path, VFIO_PCI,
};
use crate::error::{Error, Result};
use crate::netlink::NetlinkVfConfigurator;
use crate::sysfs::{Sysfs, VirtualFunction};
use crate::vf::{VfConfigurator, VfSettings};
use state::{holder_is_alive, process_start_time, LeaseRecord, LockedState, PoolState};

/// The pool's state directory when none is given: on tmpfs, because a reboot removes the
/// VFs and with them every lease.
pub const DEFAULT_POOL_DIR: &str = "/run/sriov-pool";

/// A VF handed to an instance: bound to vfio-pci, with the instance's MAC set on the PF's
/// entry for the VF.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The VF's PCI address, to open through VFIO.
    pub bdf: PciAddress,
    pub iommu_group: u32,
    /// The VFIO group device (`/dev/vfio/<group>`).
    pub vfio_dev_path: PathBuf,
    pub instance_id: String,
    pub mac: MacAddress,
    pub pf: PciAddress,
    pub vf_index: u32,
    pub holder_pid: u32,
}

/// Where the pool finds its VFs and how it configures them.
#[derive(Clone)]
pub struct PoolConfig {
    pub sysfs: Sysfs,
    pub configurator: Arc<dyn VfConfigurator>,
    /// Only VFs of these PFs belong to the pool; `None` means the VFs of every PF.
    pub pfs: Option<Vec<PciAddress>>,
    /// The process whose death ends its leases; normally the calling process.
    pub holder_pid: u32,
}

impl PoolConfig {
    /// The host's sysfs and rtnetlink, every PF, leases held by this process.
    pub fn host() -> Self {
        PoolConfig {
            sysfs: Sysfs::host(),
            configurator: Arc::new(NetlinkVfConfigurator::new()),
            pfs: None,
            holder_pid: std::process::id(),
        }
    }
}

/// One pool member and its lease, as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolEntry {
    pub bdf: PciAddress,
    pub pf: PciAddress,
    pub vf_index: u32,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub lease: Option<Lease>,
    /// A lease whose release failed part-way; retried on every reconcile.
    pub release_pending: bool,
}

/// A pool of VFs with its state in one directory.
pub struct Pool {
    state_dir: PathBuf,
    config: PoolConfig,
}

impl Pool {
    /// Opens (creating if needed) the pool in `state_dir` on this host, and releases the
    /// leases of processes that are gone.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Pool> {
        Pool::open_with(state_dir, PoolConfig::host())
    }

    /// Like [`Pool::open`] with an explicit configuration (another sysfs root, a fake
    /// configurator, a holder other than this process).
    pub fn open_with(state_dir: impl AsRef<Path>, config: PoolConfig) -> Result<Pool> {
        let pool = Pool {
            state_dir: state_dir.as_ref().to_path_buf(),
            config,
        };
        let released = pool.reconcile()?;
        if !released.is_empty() {
            log::info!("released {} lease(s) of dead holders", released.len());
        }
        Ok(pool)
    }

    /// Leases any free VF to `instance_id` with `mac`.
    pub fn lease(&self, instance_id: &str, mac: MacAddress) -> Result<Lease> {
        self.lease_matching(instance_id, mac, None)
    }

    /// Leases the VF at `vf`, which must be a free member of the pool.
    pub fn lease_vf(&self, vf: &PciAddress, instance_id: &str, mac: MacAddress) -> Result<Lease> {
        self.lease_matching(instance_id, mac, Some(vf))
    }

    /// Resets the VF, clears its MAC, returns it to its original driver and frees it.
    /// The holder must have closed its VFIO descriptors for the VF first.
    pub fn release(&self, lease: &Lease) -> Result<()> {
        let locked = LockedState::lock(&self.state_dir)?;
        let mut state = locked.load()?;
        let position = state
            .leases
            .iter()
            .position(|record| record.vf == lease.bdf && record.instance_id == lease.instance_id)
            .ok_or_else(|| Error::NoSuchLease {
                vf: lease.bdf,
                instance_id: lease.instance_id.clone(),
            })?;
        self.release_record_at(&locked, &mut state, position)
    }

    /// Releases every lease whose holder process is gone (or whose release failed before)
    /// and returns them.
    pub fn reconcile(&self) -> Result<Vec<Lease>> {
        let locked = LockedState::lock(&self.state_dir)?;
        let mut state = locked.load()?;
        self.reconcile_locked(&locked, &mut state)
    }

    /// Every pool member with its lease, and leases of VFs that no longer exist.
    pub fn status(&self) -> Result<Vec<PoolEntry>> {
        let locked = LockedState::lock(&self.state_dir)?;
        let state = locked.load()?;
        let members = self.members()?;
        let mut entries: Vec<PoolEntry> = members
            .iter()
            .map(|vf| {
                let record = state.leases.iter().find(|record| record.vf == vf.address);
                PoolEntry {
                    bdf: vf.address,
                    pf: vf.pf,
                    vf_index: vf.index,
                    driver: vf.driver.clone(),
                    iommu_group: vf.iommu_group,
                    lease: record.map(lease_of),
                    release_pending: record.is_some_and(|record| record.release_pending),
                }
            })
            .collect();
        for record in &state.leases {
            if !members.iter().any(|vf| vf.address == record.vf) {
                entries.push(PoolEntry {
                    bdf: record.vf,
                    pf: record.pf,
                    vf_index: record.vf_index,
                    driver: None,
                    iommu_group: Some(record.iommu_group),
                    lease: Some(lease_of(record)),
                    release_pending: record.release_pending,
                });
            }
        }
        Ok(entries)
    }

    fn lease_matching(
        &self,
        instance_id: &str,
        mac: MacAddress,
        wanted: Option<&PciAddress>,
    ) -> Result<Lease> {
        if mac == MacAddress::ZERO || mac.0[0] & 1 != 0 {
            return Err(Error::InvalidMacAddress(format!(
                "{mac} (must be a unicast, non-zero address)"
            )));
        }
        let locked = LockedState::lock(&self.state_dir)?;
        let mut state = locked.load()?;
        self.reconcile_locked(&locked, &mut state)?;

        if let Some(holder) = state.leases.iter().find(|record| record.mac == mac) {
            return Err(Error::MacInUse {
                mac: mac.to_string(),
                vf: holder.vf,
                instance_id: holder.instance_id.clone(),
            });
        }
        let members = self.members()?;
        let (vf, iommu_group) = self.choose_vf(&state, &members, wanted)?;
        let pf_ifname = self
            .config
            .sysfs
            .physical_function(&vf.pf)?
            .ifname
            .ok_or(Error::PfHasNoInterface { pf: vf.pf })?;
        let record = LeaseRecord {
            vf: vf.address,
            pf: vf.pf,
            pf_ifname,
            vf_index: vf.index,
            iommu_group,
            instance_id: instance_id.to_string(),
            mac,
            holder_pid: self.config.holder_pid,
            holder_start_time: process_start_time(self.config.holder_pid),
            original_driver: vf.driver.clone(),
            release_pending: false,
        };
        // Recorded first: from here on a crash leaves a lease that reconcile undoes.
        state.leases.push(record.clone());
        locked.save(&state)?;

        if let Err(error) = self.set_up(&record) {
            log::warn!("lease of {} failed ({error}); undoing it", record.vf);
            let position = state.leases.len() - 1;
            if let Err(undo_error) = self.release_record_at(&locked, &mut state, position) {
                log::error!("undoing the lease of {} failed: {undo_error}", record.vf);
            }
            return Err(error);
        }
        let lease = lease_of(&record);
        log::info!(
            "leased {} (group {}) to {instance_id} with MAC {mac}",
            lease.bdf,
            lease.iommu_group
        );
        Ok(lease)
    }

    /// The free VF to lease: `wanted`, or the first free member whose IOMMU group can
    /// become viable (one blocked group does not make the whole pool unusable; when every
    /// free VF is blocked, the first one's reason is the error).
    fn choose_vf(
        &self,
        state: &PoolState,
        members: &[VirtualFunction],
        wanted: Option<&PciAddress>,
    ) -> Result<(VirtualFunction, u32)> {
        let leased =
            |address: &PciAddress| state.leases.iter().find(|record| record.vf == *address);
        let usable = |vf: &VirtualFunction| -> Result<u32> {
            let group = vf.iommu_group.ok_or(Error::NoIommuGroup(vf.address))?;
            check_iommu_group_viable_except(&self.config.sysfs, group, &vf.address)?;
            Ok(group)
        };
        if let Some(address) = wanted {
            let vf = members
                .iter()
                .find(|vf| vf.address == *address)
                .ok_or(Error::NotInPool { vf: *address })?;
            if let Some(holder) = leased(address) {
                return Err(Error::AlreadyLeased {
                    vf: *address,
                    instance_id: holder.instance_id.clone(),
                    pid: holder.holder_pid,
                });
            }
            return Ok((vf.clone(), usable(vf)?));
        }
        let mut first_blocked = None;
        for vf in members.iter().filter(|vf| leased(&vf.address).is_none()) {
            match usable(vf) {
                Ok(group) => return Ok((vf.clone(), group)),
                Err(error) => {
                    log::warn!("skipping {}: {error}", vf.address);
                    first_blocked.get_or_insert(error);
                }
            }
        }
        Err(first_blocked.unwrap_or(Error::PoolExhausted {
            leased: state.leases.len(),
            total: members.len(),
        }))
    }

    /// MAC and anti-spoofing on the PF's entry for the VF, then the VF onto vfio-pci.
    fn set_up(&self, record: &LeaseRecord) -> Result<()> {
        let settings = VfSettings {
            mac: Some(record.mac),
            spoof_check: Some(true),
            ..VfSettings::default()
        };
        self.config
            .configurator
            .apply(&record.pf_ifname, record.vf_index, &settings)?;
        bind_driver(&self.config.sysfs, &record.vf, Some(VFIO_PCI))?;
        check_iommu_group_viable(&self.config.sysfs, record.iommu_group)
    }

    /// Undoes the lease at `position` and drops it from the state; if undoing fails the
    /// lease stays, marked for a retry, so the VF is never handed out half cleaned.
    fn release_record_at(
        &self,
        locked: &LockedState,
        state: &mut PoolState,
        position: usize,
    ) -> Result<()> {
        let result = self.tear_down(&state.leases[position]);
        match &result {
            Ok(()) => {
                let record = state.leases.remove(position);
                log::info!("released {} from {}", record.vf, record.instance_id);
            }
            Err(error) => {
                log::warn!("release of {} failed: {error}", state.leases[position].vf);
                state.leases[position].release_pending = true;
            }
        }
        locked.save(state)?;
        result
    }

    fn tear_down(&self, record: &LeaseRecord) -> Result<()> {
        let sysfs = &self.config.sysfs;
        if !sysfs.device_exists(&record.vf) {
            log::warn!(
                "{} no longer exists (VFs disabled?); dropping its lease",
                record.vf
            );
            return Ok(());
        }
        reset_function(sysfs, &record.vf)?;
        let clear_mac = VfSettings {
            mac: Some(MacAddress::ZERO),
            ..VfSettings::default()
        };
        // The PF may have been renamed since the lease; its current name is what netlink
        // knows.
        let pf_ifname = match sysfs.physical_function(&record.pf) {
            Ok(pf) => pf.ifname.unwrap_or_else(|| record.pf_ifname.clone()),
            Err(_) => record.pf_ifname.clone(),
        };
        self.config
            .configurator
            .apply(&pf_ifname, record.vf_index, &clear_mac)?;
        bind_driver(sysfs, &record.vf, record.original_driver.as_deref())
    }

    fn reconcile_locked(&self, locked: &LockedState, state: &mut PoolState) -> Result<Vec<Lease>> {
        let mut released = Vec::new();
        let mut position = 0;
        while position < state.leases.len() {
            let record = &state.leases[position];
            let abandoned = record.release_pending
                || !holder_is_alive(record.holder_pid, record.holder_start_time);
            if !abandoned {
                position += 1;
                continue;
            }
            let lease = lease_of(record);
            log::info!(
                "lease of {} by {} (pid {}) is abandoned; releasing it",
                lease.bdf,
                lease.instance_id,
                lease.holder_pid
            );
            match self.release_record_at(locked, state, position) {
                Ok(()) => released.push(lease),
                // Kept, marked pending; the next reconcile tries again.
                Err(_) => position += 1,
            }
        }
        Ok(released)
    }

    fn members(&self) -> Result<Vec<VirtualFunction>> {
        let mut members = Vec::new();
        for pf in self.config.sysfs.physical_functions()? {
            let wanted = match &self.config.pfs {
                Some(allowed) => allowed.contains(&pf.address),
                None => true,
            };
            if wanted {
                members.extend(pf.vfs);
            }
        }
        Ok(members)
    }
}

fn lease_of(record: &LeaseRecord) -> Lease {
    Lease {
        bdf: record.vf,
        iommu_group: record.iommu_group,
        vfio_dev_path: vfio_group_path(record.iommu_group),
        instance_id: record.instance_id.clone(),
        mac: record.mac,
        pf: record.pf,
        vf_index: record.vf_index,
        holder_pid: record.holder_pid,
    }
}
