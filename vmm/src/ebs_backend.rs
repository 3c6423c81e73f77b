//! virtio-blk backend for EBS volumes: NBD to the block service (`ebsd`),
//! through the ebs-blockdev client (pipelined: each worker thread's
//! requests are in flight together on one connection).
//!
//! A broken connection does not fail the guest's I/O: the request is
//! retried on a fresh connection (reconnecting with back-off for up to
//! ~30 s) because every virtio-blk request is idempotent at its offset.
//! Errors the server reports (EIO, EPERM, out of range) are not retried.
//! virtio-blk FLUSH maps to NBD FLUSH; writes are plain NBD WRITEs (virtio
//! has no FUA), acknowledged to the guest once the server replied.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::virtio::block::BlockBackend;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint, NbdError};

const RETRIES: u32 = 12;

pub struct EbsBackend {
    endpoint: NbdEndpoint,
    volume_id: String,
    token: Option<String>,
    size: u64,
    read_only: bool,
    client: Mutex<Option<Arc<NbdClient>>>,
}

fn retryable(e: &NbdError) -> bool {
    matches!(
        e,
        NbdError::Io(_)
            | NbdError::Disconnected(_)
            | NbdError::Connect { .. }
            | NbdError::Protocol(_)
    )
}

fn to_io(e: NbdError) -> io::Error {
    io::Error::other(e.to_string())
}

impl EbsBackend {
    /// Connect to `volume_id` on `endpoint` with the attachment's token.
    pub fn connect(endpoint: &str, volume_id: &str, token: Option<&str>) -> io::Result<Self> {
        let endpoint: NbdEndpoint = endpoint.parse().map_err(to_io)?;
        let client = NbdClient::connect(&endpoint, volume_id, token).map_err(to_io)?;
        let info = client.info();
        log::info!(
            "EBS {volume_id}: {} bytes over NBD at {endpoint}{}",
            info.size,
            if info.read_only() { " (read-only)" } else { "" }
        );
        Ok(Self {
            endpoint,
            volume_id: volume_id.to_string(),
            token: token.map(str::to_string),
            size: info.size,
            read_only: info.read_only(),
            client: Mutex::new(Some(Arc::new(client))),
        })
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn current(&self) -> Result<Arc<NbdClient>, NbdError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(NbdClient::connect(
            &self.endpoint,
            &self.volume_id,
            self.token.as_deref(),
        )?);
        if c.size() != self.size {
            return Err(NbdError::Protocol(format!(
                "volume size changed from {} to {} across a reconnect",
                self.size,
                c.size()
            )));
        }
        log::info!("EBS {}: reconnected to {}", self.volume_id, self.endpoint);
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Forget `broken` (unless another thread already replaced it).
    fn drop_connection(&self, broken: &Arc<NbdClient>) {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *slot = None;
        }
    }

    fn with_retry<T>(
        &self,
        what: &str,
        op: impl Fn(&NbdClient) -> Result<T, NbdError>,
    ) -> io::Result<T> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let result = self.current().and_then(|c| {
                op(&c).inspect_err(|e| {
                    if retryable(e) {
                        self.drop_connection(&c);
                    }
                })
            });
            match result {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < RETRIES => {
                    attempt += 1;
                    log::warn!(
                        "EBS {}: {what} failed ({e}); retry {attempt}/{RETRIES} in {delay:?}",
                        self.volume_id
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
                Err(e) => return Err(to_io(e)),
            }
        }
    }
}

impl BlockBackend for EbsBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // Each attempt reads into the same buffer; a partial read from a
        // broken attempt is overwritten by the retry.
        let cell = Mutex::new(buf);
        self.with_retry("read", |c| {
            let mut b = cell.lock().unwrap_or_else(|e| e.into_inner());
            c.read_at(offset, &mut b)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with_retry("write", |c| c.write_at(offset, buf, false))
    }

    fn flush(&self) -> io::Result<()> {
        self.with_retry("flush", |c| c.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.with_retry("trim", |c| c.trim(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.with_retry("write-zeroes", |c| c.write_zeroes(offset, len, unmap))
    }
}
