//! MSI-X: the capability, the vector table and the pending-bit array, with
//! masking done here so that a masked vector is held pending and delivered
//! when unmasked. Delivery itself is the VMM's business ([`MsiInterrupts`]:
//! KVM GSI routes + irqfds), so this stays independent of KVM.

use std::sync::Arc;

/// An MSI message as the guest programs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// How the VMM delivers MSI vectors of one device.
pub trait MsiInterrupts: Send + Sync {
    /// Vector `vector` now sends `msg` (None: disabled or masked).
    fn update(&self, vector: u16, msg: Option<MsiMessage>) -> std::io::Result<()>;
    /// Deliver `vector` (the caller has checked that it is unmasked).
    fn fire(&self, vector: u16) -> std::io::Result<()>;
}

pub const MSIX_CAP_ID: u8 = 0x11;
const ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.addr_lo) | (u64::from(self.addr_hi) << 32),
            data: self.data,
        }
    }

    fn masked(&self) -> bool {
        self.ctrl & VECTOR_MASKED != 0
    }
}

/// The vector table, pending bits and the capability's control bits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixState {
    /// Per vector: address low, address high, data, vector control.
    pub entries: Vec<[u32; 4]>,
    pub pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

pub struct MsixConfig {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn MsiInterrupts>,
}

impl MsixConfig {
    pub fn new(vectors: u16, sink: Arc<dyn MsiInterrupts>) -> Self {
        let n = usize::from(vectors.max(1));
        Self {
            entries: vec![
                Entry {
                    ctrl: VECTOR_MASKED,
                    ..Default::default()
                };
                n
            ],
            pending: vec![false; n],
            enabled: false,
            function_masked: false,
            sink,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn table_size_bytes(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    pub fn pba_size_bytes(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// The capability body (after ID and next pointer): message control,
    /// table offset/BIR, PBA offset/BIR. Only the enable and function-mask
    /// bits are writable.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> ([u8; 10], [u8; 10]) {
        let mut body = [0u8; 10];
        let ctrl = self.vectors() - 1;
        body[0..2].copy_from_slice(&ctrl.to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let mut writable = [0u8; 10];
        writable[1] = ((CTRL_ENABLE | CTRL_FUNCTION_MASK) >> 8) as u8;
        (body, writable)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> MsixState {
        MsixState {
            entries: self
                .entries
                .iter()
                .map(|e| [e.addr_lo, e.addr_hi, e.data, e.ctrl])
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Load a saved table and re-create the VMM's routes for every live
    /// vector (KVM GSI routes and irqfds are not part of any saved state:
    /// they follow from the table). Pending vectors stay pending.
    pub fn restore(&mut self, s: &MsixState) -> Result<(), crate::state::StateError> {
        if s.entries.len() != self.entries.len() || s.pending.len() != self.entries.len() {
            return Err(crate::state::StateError::Mismatch(format!(
                "{} MSI-X vectors in the snapshot, {} here",
                s.entries.len(),
                self.entries.len()
            )));
        }
        for (e, w) in self.entries.iter_mut().zip(&s.entries) {
            *e = Entry {
                addr_lo: w[0],
                addr_hi: w[1],
                data: w[2],
                ctrl: w[3],
            };
        }
        self.pending.clone_from(&s.pending);
        self.enabled = s.enabled;
        self.function_masked = s.function_masked;
        for v in 0..self.entries.len() {
            if self.vector_live(v) {
                self.push_route(v);
            }
        }
        Ok(())
    }

    fn vector_live(&self, v: usize) -> bool {
        self.enabled && !self.function_masked && !self.entries[v].masked()
    }

    fn push_route(&self, v: usize) {
        let msg = self.vector_live(v).then(|| self.entries[v].message());
        if let Err(e) = self.sink.update(v as u16, msg) {
            log::warn!("msix: cannot update vector {v}: {e}");
        }
    }

    fn deliver_pending(&mut self) {
        for v in 0..self.entries.len() {
            if self.pending[v] && self.vector_live(v) {
                self.pending[v] = false;
                if let Err(e) = self.sink.fire(v as u16) {
                    log::warn!("msix: cannot deliver pending vector {v}: {e}");
                }
            }
        }
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, ctrl: u16) {
        let enabled = ctrl & CTRL_ENABLE != 0;
        let masked = ctrl & CTRL_FUNCTION_MASK != 0;
        if enabled == self.enabled && masked == self.function_masked {
            return;
        }
        self.enabled = enabled;
        self.function_masked = masked;
        for v in 0..self.entries.len() {
            self.push_route(v);
        }
        self.deliver_pending();
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get(v) else { return };
        let words = [e.addr_lo, e.addr_hi, e.data, e.ctrl];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let at = (offset % ENTRY_SIZE) as usize;
        let n = data.len().min(16 - at);
        data[..n].copy_from_slice(&bytes[at..at + n]);
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let v = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get(v).copied() else {
            return;
        };
        let mut bytes = [0u8; 16];
        for (i, w) in [e.addr_lo, e.addr_hi, e.data, e.ctrl].iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let at = (offset % ENTRY_SIZE) as usize;
        let n = data.len().min(16 - at);
        bytes[at..at + n].copy_from_slice(&data[..n]);
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        };
        self.entries[v] = Entry {
            addr_lo: word(0),
            addr_hi: word(1),
            data: word(2),
            ctrl: word(3),
        };
        let was_masked = e.masked();
        let now_masked = self.entries[v].masked();
        let msg_changed = e.message() != self.entries[v].message();
        if was_masked != now_masked || (msg_changed && !now_masked) {
            self.push_route(v);
        }
        if was_masked && !now_masked {
            self.deliver_pending();
        }
    }

    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            let base = (offset as usize + i) * 8;
            for bit in 0..8 {
                if self.pending.get(base + bit).copied().unwrap_or(false) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    /// Raise `vector`: delivered now, or held pending while masked.
    pub fn trigger(&mut self, vector: u16) {
        let v = usize::from(vector);
        if v >= self.entries.len() {
            return;
        }
        if self.vector_live(v) {
            if let Err(e) = self.sink.fire(vector) {
                log::warn!("msix: cannot deliver vector {v}: {e}");
            }
        } else {
            self.pending[v] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        routes: Mutex<Vec<(u16, Option<MsiMessage>)>>,
        fired: Mutex<Vec<u16>>,
    }

    impl MsiInterrupts for Recorder {
        fn update(&self, vector: u16, msg: Option<MsiMessage>) -> std::io::Result<()> {
            self.routes.lock().unwrap().push((vector, msg));
            Ok(())
        }
        fn fire(&self, vector: u16) -> std::io::Result<()> {
            self.fired.lock().unwrap().push(vector);
            Ok(())
        }
    }

    #[test]
    fn masked_vectors_stay_pending_until_unmasked() {
        let rec = Arc::new(Recorder::default());
        let mut m = MsixConfig::new(2, rec.clone());
        // Program vector 1, still masked (reset state).
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(24, &0x41u32.to_le_bytes());
        m.set_control(CTRL_ENABLE);
        m.trigger(1);
        assert!(rec.fired.lock().unwrap().is_empty());
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        // Unmask: the route is pushed and the pending vector delivered.
        m.write_table(28, &0u32.to_le_bytes());
        assert_eq!(*rec.fired.lock().unwrap(), vec![1]);
        assert!(rec.routes.lock().unwrap().contains(&(
            1,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        )));
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        m.trigger(1);
        assert_eq!(*rec.fired.lock().unwrap(), vec![1, 1]);
        // Function mask holds everything.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.trigger(1);
        assert_eq!(rec.fired.lock().unwrap().len(), 2);
        m.set_control(CTRL_ENABLE);
        assert_eq!(rec.fired.lock().unwrap().len(), 3);
    }

    #[test]
    fn state_restore_pushes_live_routes_only() {
        let rec = Arc::new(Recorder::default());
        let mut m = MsixConfig::new(2, rec.clone());
        m.write_table(16, &0xfee0_0000u32.to_le_bytes());
        m.write_table(24, &0x41u32.to_le_bytes());
        m.write_table(28, &0u32.to_le_bytes());
        m.set_control(CTRL_ENABLE);
        m.trigger(0); // masked: pending
        let saved = m.state();
        let rec2 = Arc::new(Recorder::default());
        let mut n = MsixConfig::new(2, rec2.clone());
        n.restore(&saved).unwrap();
        assert_eq!(n.state(), saved);
        assert_eq!(
            *rec2.routes.lock().unwrap(),
            vec![(
                1,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                })
            )]
        );
        assert!(rec2.fired.lock().unwrap().is_empty());
        let mut small = MsixConfig::new(1, rec2);
        assert!(small.restore(&saved).is_err());
    }

    #[test]
    fn table_reads_back_and_ignores_out_of_range() {
        let rec = Arc::new(Recorder::default());
        let mut m = MsixConfig::new(1, rec);
        m.write_table(8, &0x1234u32.to_le_bytes());
        let mut d = [0u8; 4];
        m.read_table(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234);
        m.write_table(64, &[1, 2, 3, 4]);
        m.read_table(64, &mut d);
        assert_eq!(d, [0; 4]);
        m.trigger(7);
        let (body, w) = m.capability(0, 0x4000, 0x5000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 0);
        assert_eq!(
            u32::from_le_bytes([body[2], body[3], body[4], body[5]]),
            0x4000
        );
        assert_eq!(w[1], 0xc0);
    }
}
