//! Pausing a running VM and the state a snapshot saves and restores
//! (see `crate::snapshot`). A child of `vm` so it can reach the VM's parts.

use std::time::Duration;

use super::{Vm, VmError};

impl Vm {
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Park every vCPU out of KVM_RUN (pending I/O completed), then stop
    /// the devices' workers (requests in flight complete first). After
    /// this nothing writes guest memory until [`Vm::resume`].
    pub fn pause(&mut self) -> Result<(), VmError> {
        if self.paused {
            return Ok(());
        }
        if self.vcpus.is_empty() {
            return Err(VmError::NotStarted);
        }
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        for mut v in self.vcpus.drain(..) {
            let fd = v.park(Duration::from_secs(5)).ok_or(VmError::Pause(v.id))?;
            self.vcpu_fds.push(fd);
        }
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pause_devices();
        self.paused = true;
        log::info!("VM paused");
        Ok(())
    }

    /// Restart the devices' workers, then the vCPUs.
    pub fn resume(&mut self) -> Result<(), VmError> {
        if !self.paused {
            return Err(VmError::NotPaused);
        }
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resume_devices();
        self.start()?;
        log::info!("VM resumed");
        Ok(())
    }

    /// A restored VM starts out paused: its state is loaded, nothing runs.
    pub(crate) fn mark_restored(&mut self) {
        self.paused = true;
    }

    pub(crate) fn msr_list(&self) -> &[u32] {
        &self.msr_list
    }

    /// The vCPUs while no thread runs them (paused, or not yet started).
    pub(crate) fn parked_vcpus(&self) -> &[kvm_ioctls::VcpuFd] {
        &self.vcpu_fds
    }

    pub(crate) fn pci_state(
        &self,
    ) -> Result<Vec<devices::state::PciSlotState>, devices::state::StateError> {
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save_state()
    }

    pub(crate) fn restore_pci_state(
        &self,
        states: &[devices::state::PciSlotState],
    ) -> Result<(), VmError> {
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(states)?;
        Ok(())
    }

    pub(crate) fn legacy_state(&self) -> devices::state::LegacyState {
        devices::state::LegacyState {
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save_state(),
            i8042: self
                .i8042
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save_state(),
            cmos: self
                .cmos
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save_state(),
            pci_config_address: self
                .pci_config_io
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .address(),
        }
    }

    pub(crate) fn restore_legacy_state(
        &self,
        s: &devices::state::LegacyState,
    ) -> Result<(), VmError> {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(&s.serial)?;
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(&s.i8042)?;
        self.cmos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore_state(&s.cmos)?;
        self.pci_config_io
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_address(s.pci_config_address);
        Ok(())
    }
}
