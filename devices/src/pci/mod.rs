//! PCI: configuration space, the root bus with its two config mechanisms
//! (0xCF8/0xCFC and ECAM), BAR dispatch, and MSI-X.
//!
//! One trait, [`PciDevice`], serves both emulated (virtio-pci) and
//! passthrough (VFIO) functions: the root routes config accesses to it and
//! its BARs are mapped on the MMIO (or PIO) bus by [`PciRoot`], which moves
//! them when the guest reprograms a BAR.

pub mod config;
pub mod msix;
mod root;

pub use config::{Bar, BarKind, BarMove, ConfigSpaceState, PciConfiguration, PciIds};
pub use msix::{MsiInterrupts, MsiMessage, MsixConfig, MsixState};
pub use root::{PciConfigIo, PciConfigMmio, PciRoot, PciRootError};

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    /// Read `data.len()` bytes of configuration space at `offset`.
    fn read_config(&mut self, offset: usize, data: &mut [u8]);
    /// Write configuration space; returns BARs the write moved.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove>;
    /// The BARs the function decodes, at their current addresses.
    fn bars(&self) -> Vec<Bar>;
    /// Guest access to BAR `bar` at `offset`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// A BAR moved: re-point anything keyed on its address (ioeventfds).
    fn bar_moved(&mut self, _mv: &BarMove) {}
    /// Stop touching guest memory (workers finish what they started and
    /// park) until [`PciDevice::resume`]. The vCPUs are already stopped.
    fn pause(&mut self) {}
    fn resume(&mut self) {}
    /// State for a snapshot (the device is paused). Functions that cannot
    /// be snapshotted (VFIO passthrough) refuse.
    fn save_state(&mut self) -> Result<PciDeviceState, crate::state::StateError> {
        Err(crate::state::StateError::Unsupported(
            "this PCI function".into(),
        ))
    }
    /// Load saved state into a function built from the same configuration.
    /// Returns BARs whose placement differs, for the root to re-map. The
    /// device stays paused until [`PciDevice::resume`].
    fn restore_state(
        &mut self,
        _state: &PciDeviceState,
    ) -> Result<Vec<BarMove>, crate::state::StateError> {
        Err(crate::state::StateError::Unsupported(
            "this PCI function".into(),
        ))
    }
}

/// What a PCI function saves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PciDeviceState {
    HostBridge(ConfigSpaceState),
    Virtio(Box<crate::virtio::state::VirtioPciState>),
}
