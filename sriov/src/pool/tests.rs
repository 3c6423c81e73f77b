use std::sync::Arc;

use super::*;
use crate::testing::{pci, FakeHost, DEAD_PID};
use crate::vf::{set_num_vfs, RecordingVfConfigurator};

struct Fixture {
    host: FakeHost,
    configurator: Arc<RecordingVfConfigurator>,
    state_dir: PathBuf,
}

impl Fixture {
    /// An igb PF that is up, with `vfs` VFs on igbvf.
    fn new(vfs: u32) -> Self {
        let host = FakeHost::new();
        host.add_igb_pf("0000:01:00.0", "eth0", true, 7);
        set_num_vfs(&host.sysfs(), &pci("0000:01:00.0"), vfs).unwrap();
        let state_dir = host.scratch_dir("pool");
        Fixture {
            host,
            configurator: Arc::new(RecordingVfConfigurator::new()),
            state_dir,
        }
    }

    /// A pool as opened by the process with id `holder_pid`.
    fn open(&self, holder_pid: u32) -> Pool {
        let config = PoolConfig {
            sysfs: self.host.sysfs(),
            configurator: self.configurator.clone(),
            pfs: None,
            holder_pid,
        };
        Pool::open_with(&self.state_dir, config).unwrap()
    }

    fn driver(&self, vf: &str) -> Option<String> {
        self.host.sysfs().driver_of(&pci(vf)).unwrap()
    }

    fn macs_set(&self) -> Vec<(u32, MacAddress)> {
        self.configurator
            .calls()
            .into_iter()
            .filter_map(|call| call.settings.mac.map(|mac| (call.vf_index, mac)))
            .collect()
    }
}

fn mac(text: &str) -> MacAddress {
    text.parse().unwrap()
}

#[test]
fn lease_binds_vf_to_vfio_with_the_mac_and_release_returns_it() {
    let fixture = Fixture::new(2);
    let pool = fixture.open(std::process::id());
    let lease = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap();

    assert_eq!(lease.bdf, pci("0000:01:10.0"));
    assert_eq!(lease.instance_id, "i-0001");
    let group = fixture
        .host
        .sysfs()
        .iommu_group_of(&lease.bdf)
        .unwrap()
        .unwrap();
    assert_eq!(lease.iommu_group, group);
    assert_eq!(
        lease.vfio_dev_path,
        PathBuf::from(format!("/dev/vfio/{group}"))
    );
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("vfio-pci"));
    let calls = fixture.configurator.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].pf_ifname, "eth0");
    assert_eq!(calls[0].vf_index, 0);
    assert_eq!(calls[0].settings.mac, Some(mac("02:00:00:00:00:01")));
    assert_eq!(calls[0].settings.spoof_check, Some(true));

    pool.release(&lease).unwrap();
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("igbvf"));
    assert_eq!(fixture.host.driver_override(&lease.bdf), "(null)");
    assert_eq!(fixture.host.resets(), vec![lease.bdf]);
    assert_eq!(
        fixture.macs_set(),
        vec![(0, mac("02:00:00:00:00:01")), (0, MacAddress::ZERO)]
    );
    assert!(pool
        .status()
        .unwrap()
        .iter()
        .all(|entry| entry.lease.is_none()));
    let error = pool.release(&lease).unwrap_err();
    assert!(matches!(error, Error::NoSuchLease { .. }), "{error:?}");
}

#[test]
fn leases_hand_out_each_vf_once_until_the_pool_is_exhausted() {
    let fixture = Fixture::new(2);
    let pool = fixture.open(std::process::id());
    let first = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap();
    let second = pool.lease("i-0002", mac("02:00:00:00:00:02")).unwrap();
    assert_ne!(first.bdf, second.bdf);
    let error = pool.lease("i-0003", mac("02:00:00:00:00:03")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no free VF in the pool (2 leased of 2; `sriovctl enable PF N` creates VFs)"
    );

    pool.release(&first).unwrap();
    let third = pool.lease("i-0003", mac("02:00:00:00:00:03")).unwrap();
    assert_eq!(third.bdf, first.bdf);
}

#[test]
fn a_second_process_cannot_lease_a_leased_vf_or_reuse_a_mac() {
    let fixture = Fixture::new(2);
    let me = std::process::id();
    let first_process = fixture.open(me);
    let lease = first_process
        .lease_vf(&pci("0000:01:10.2"), "i-0001", mac("02:00:00:00:00:01"))
        .unwrap();

    // Another pool object on the same directory stands for another process: it only
    // shares the state file and the lock.
    let second_process = fixture.open(me);
    let error = second_process
        .lease_vf(&lease.bdf, "i-0002", mac("02:00:00:00:00:02"))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("VF 0000:01:10.2 is already leased to instance i-0001 (holder pid {me})")
    );
    let error = second_process
        .lease("i-0002", mac("02:00:00:00:00:01"))
        .unwrap_err();
    assert!(matches!(error, Error::MacInUse { .. }), "{error:?}");
    let other = second_process
        .lease("i-0002", mac("02:00:00:00:00:02"))
        .unwrap();
    assert_eq!(other.bdf, pci("0000:01:10.0"));
}

#[test]
fn leases_of_a_live_holder_survive_a_restart() {
    let fixture = Fixture::new(2);
    let lease = fixture
        .open(std::process::id())
        .lease("i-0001", mac("02:00:00:00:00:01"))
        .unwrap();

    let restarted = fixture.open(std::process::id());
    let status = restarted.status().unwrap();
    let leased: Vec<_> = status
        .iter()
        .filter_map(|entry| entry.lease.clone())
        .collect();
    assert_eq!(leased, vec![lease.clone()]);
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("vfio-pci"));
    assert!(fixture.host.resets().is_empty());
    restarted.release(&lease).unwrap();
}

#[test]
fn leases_of_a_crashed_holder_are_released_on_restart() {
    let fixture = Fixture::new(2);
    let crashed = fixture.open(DEAD_PID);
    let lease = crashed.lease("i-0001", mac("02:00:00:00:00:01")).unwrap();
    assert_eq!(lease.holder_pid, DEAD_PID);
    // The holder "dies" without releasing: the VF stays on vfio-pci and in the state file.
    drop(crashed);
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("vfio-pci"));

    let restarted = fixture.open(std::process::id());
    assert!(restarted
        .status()
        .unwrap()
        .iter()
        .all(|entry| entry.lease.is_none()));
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("igbvf"));
    assert_eq!(fixture.host.resets(), vec![lease.bdf]);
    assert_eq!(fixture.macs_set().last(), Some(&(0, MacAddress::ZERO)));
    let again = restarted
        .lease_vf(&lease.bdf, "i-0002", mac("02:00:00:00:00:02"))
        .unwrap();
    assert_eq!(again.holder_pid, std::process::id());
}

#[test]
fn a_vf_whose_group_is_not_viable_is_refused_and_left_as_it_was() {
    let fixture = Fixture::new(1);
    let vf = pci("0000:01:10.0");
    let group = fixture.host.sysfs().iommu_group_of(&vf).unwrap().unwrap();
    fixture
        .host
        .add_device_in_group("0000:00:19.0", "e1000e", group);
    let pool = fixture.open(std::process::id());

    let error = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("IOMMU group {group} is not viable: 0000:00:19.0 is bound to e1000e; every member must be bound to vfio-pci or to no driver")
    );
    // Refused before anything was changed.
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("igbvf"));
    assert!(fixture.configurator.calls().is_empty());
    assert!(fixture.host.resets().is_empty());
    assert!(pool
        .status()
        .unwrap()
        .iter()
        .all(|entry| entry.lease.is_none()));
}

#[test]
fn a_lease_that_fails_after_setting_the_mac_is_undone() {
    let fixture = Fixture::new(1);
    let vf = pci("0000:01:10.0");
    // The fake kernel's probe binds nothing for this VF, so the bind step fails after the
    // MAC was set and igbvf was unbound.
    fixture.host.refuse_probe(&vf, VFIO_PCI);
    let pool = fixture.open(std::process::id());
    let error = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap_err();
    assert!(matches!(error, Error::BindFailed { .. }), "{error:?}");
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("igbvf"));
    assert_eq!(
        fixture.macs_set(),
        vec![(0, mac("02:00:00:00:00:01")), (0, MacAddress::ZERO)]
    );
    assert!(pool
        .status()
        .unwrap()
        .iter()
        .all(|entry| entry.lease.is_none()));
}

#[test]
fn a_failed_release_keeps_the_vf_out_of_the_pool_until_it_succeeds() {
    let fixture = Fixture::new(1);
    let pool = fixture.open(std::process::id());
    let lease = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap();
    fixture.configurator.set_failing(true);
    assert!(pool.release(&lease).is_err());
    let status = pool.status().unwrap();
    assert!(status[0].release_pending, "{status:?}");
    let error = pool.lease("i-0002", mac("02:00:00:00:00:02")).unwrap_err();
    assert!(matches!(error, Error::PoolExhausted { .. }), "{error:?}");

    fixture.configurator.set_failing(false);
    let released = pool.reconcile().unwrap();
    assert_eq!(released, vec![lease]);
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("igbvf"));
}

#[test]
fn pool_can_be_restricted_to_some_pfs_and_rejects_bad_macs() {
    let fixture = Fixture::new(1);
    let config = PoolConfig {
        sysfs: fixture.host.sysfs(),
        configurator: fixture.configurator.clone(),
        pfs: Some(vec![pci("0000:02:00.0")]),
        holder_pid: std::process::id(),
    };
    let pool = Pool::open_with(&fixture.state_dir, config).unwrap();
    assert!(pool.status().unwrap().is_empty());
    let error = pool
        .lease_vf(&pci("0000:01:10.0"), "i-0001", mac("02:00:00:00:00:01"))
        .unwrap_err();
    assert_eq!(error.to_string(), "VF 0000:01:10.0 is not in the pool");
    for bad in ["00:00:00:00:00:00", "01:00:5e:00:00:01"] {
        assert!(matches!(
            pool.lease("i-0001", mac(bad)),
            Err(Error::InvalidMacAddress(_))
        ));
    }
}

#[test]
fn concurrent_leases_from_separate_pools_never_share_a_vf() {
    let fixture = Arc::new(Fixture::new(7));
    let leasers: Vec<_> = (0..8)
        .map(|n| {
            let fixture = Arc::clone(&fixture);
            std::thread::spawn(move || {
                let pool = fixture.open(std::process::id());
                pool.lease(&format!("i-{n}"), mac(&format!("02:00:00:00:00:{n:02x}")))
            })
        })
        .collect();
    let results: Vec<_> = leasers
        .into_iter()
        .map(|leaser| leaser.join().unwrap())
        .collect();
    let mut leased: Vec<_> = results
        .iter()
        .filter_map(|result| result.as_ref().ok().map(|lease| lease.bdf))
        .collect();
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), 7, "{results:?}");
    let refused: Vec<_> = results
        .iter()
        .filter_map(|result| result.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert!(
        matches!(refused[0], Error::PoolExhausted { .. }),
        "{refused:?}"
    );
}

#[test]
fn release_clears_the_mac_through_the_pfs_current_interface_name() {
    let fixture = Fixture::new(1);
    let pool = fixture.open(std::process::id());
    let lease = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap();
    fixture
        .host
        .rename_interface(&pci("0000:01:00.0"), "eth0", "enp1s0");
    pool.release(&lease).unwrap();
    let last = fixture.configurator.calls().pop().unwrap();
    assert_eq!(
        (last.pf_ifname.as_str(), last.settings.mac),
        ("enp1s0", Some(MacAddress::ZERO))
    );
}

#[test]
fn any_vf_lease_skips_a_vf_whose_group_is_blocked() {
    let fixture = Fixture::new(2);
    let first = pci("0000:01:10.0");
    let group = fixture
        .host
        .sysfs()
        .iommu_group_of(&first)
        .unwrap()
        .unwrap();
    fixture
        .host
        .add_device_in_group("0000:00:19.0", "e1000e", group);
    let pool = fixture.open(std::process::id());
    let lease = pool.lease("i-0001", mac("02:00:00:00:00:01")).unwrap();
    assert_eq!(lease.bdf, pci("0000:01:10.2"));
    assert_eq!(fixture.driver("0000:01:10.0").as_deref(), Some("igbvf"));
    let error = pool.lease("i-0002", mac("02:00:00:00:00:02")).unwrap_err();
    assert!(matches!(error, Error::GroupNotViable { .. }), "{error:?}");
}
