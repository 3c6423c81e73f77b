//! The burstable CPU-credit model of T instances, on an injectable clock.
//!
//! Rules (EC2 User Guide, "Key concepts and definitions for burstable performance
//! instances" and "Standard mode concepts"):
//! - one CPU credit = one vCPU at 100% for one minute; credits are earned continuously at
//!   the type's rate and accrue up to 24 hours' worth, the rest is discarded;
//! - spending is measured CPU time: here the cgroup's `cpu.stat` `usage_usec`, which
//!   counts every thread of the guest's VMM, i.e. vCPU-microseconds;
//! - standard mode: with no credits left the instance is held to its baseline, and the
//!   drop is gradual; unlimited mode: never held, the instance spends *surplus* credits
//!   that later earnings pay down (surplus beyond 24 hours' earnings would be billed);
//! - T3/T3a get no launch credits (T2 Standard got 30 per vCPU); the model supports them
//!   for types that have them, spent first and not counted against the accrual limit;
//! - T3/T3a keep their balance for seven days after a stop.
//!
//! Enforcement is a cgroup v2 `cpu.max` value from [`CreditAccount::cpu_max`].

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Ec2Error;
use crate::instance_types::InstanceTypeInfo;

/// Microseconds of vCPU time in one credit (one vCPU-minute).
const USEC_PER_CREDIT: f64 = 60.0 * 1_000_000.0;
/// How long a stopped T3's credits are kept.
const STOPPED_CREDIT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The kernel refuses cpu.max quotas under 1 ms.
const MIN_QUOTA_USEC: u64 = 1_000;
/// cgroup v2's default period.
pub const DEFAULT_PERIOD_USEC: u64 = 100_000;

/// Wall-clock time since the Unix epoch: balances are persisted with the instance and
/// must survive a restart of the front door, so a process-local monotonic clock won't do.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(Mutex<Duration>);

impl ManualClock {
    pub fn new(start: Duration) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `CpuCredits` of a T instance's credit specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreditMode {
    Standard,
    Unlimited,
}

impl FromStr for CreditMode {
    type Err = Ec2Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "standard" => Ok(CreditMode::Standard),
            "unlimited" => Ok(CreditMode::Unlimited),
            other => Err(Ec2Error::invalid_value(format!(
                "Value ({other}) for parameter CpuCredits is invalid. Valid values: standard, unlimited"
            ))),
        }
    }
}

/// A cgroup v2 `cpu.max` value: `max PERIOD` or `QUOTA PERIOD` (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_usec: Option<u64>,
    pub period_usec: u64,
}

impl CpuMax {
    pub fn unlimited() -> Self {
        CpuMax {
            quota_usec: None,
            period_usec: DEFAULT_PERIOD_USEC,
        }
    }
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota_usec {
            None => write!(f, "max {}", self.period_usec),
            Some(quota) => write!(f, "{quota} {}", self.period_usec),
        }
    }
}

impl FromStr for CpuMax {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut fields = text.split_whitespace();
        let quota = fields.next().ok_or("empty cpu.max")?;
        let period = match fields.next() {
            Some(period) => period
                .parse()
                .map_err(|_| format!("bad period in {text:?}"))?,
            None => DEFAULT_PERIOD_USEC,
        };
        let quota_usec = match quota {
            "max" => None,
            number => Some(
                number
                    .parse()
                    .map_err(|_| format!("bad quota in {text:?}"))?,
            ),
        };
        Ok(CpuMax {
            quota_usec,
            period_usec: period,
        })
    }
}

/// What one [`CreditAccount::update`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CreditStep {
    pub earned: f64,
    pub spent: f64,
}

/// One instance's CPU credits. Serialisable so it persists with the instance record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreditAccount {
    vcpus: u32,
    credits_per_hour: f64,
    max_balance: f64,
    /// Baseline as a fraction of one vCPU (t3.micro: 0.10).
    baseline_per_vcpu: f64,
    mode: CreditMode,
    balance: f64,
    launch_balance: f64,
    surplus: f64,
    /// Surplus beyond the 24-hour cap, or left at a stop: what EC2 would bill.
    charged_surplus: f64,
    last_update_secs: f64,
    last_usage_usec: u64,
    stopped_at_secs: Option<f64>,
}

impl CreditAccount {
    /// A fresh account for a launch, or `None` for a type without burstable CPU.
    pub fn new(info: &InstanceTypeInfo, mode: CreditMode, now: Duration) -> Option<Self> {
        let burstable = info.burstable?;
        Some(CreditAccount {
            vcpus: info.vcpus,
            credits_per_hour: burstable.credits_earned_per_hour,
            max_balance: burstable.max_earned_credits,
            baseline_per_vcpu: burstable.baseline_percent_per_vcpu / 100.0,
            mode,
            balance: 0.0,
            launch_balance: burstable.launch_credits,
            surplus: 0.0,
            charged_surplus: 0.0,
            last_update_secs: now.as_secs_f64(),
            last_usage_usec: 0,
            stopped_at_secs: None,
        })
    }

    pub fn mode(&self) -> CreditMode {
        self.mode
    }

    /// ModifyInstanceCreditSpecification: takes effect from the next update.
    pub fn set_mode(&mut self, mode: CreditMode) {
        self.mode = mode;
    }

    /// Earned (and launch) credits available to spend: CPUCreditBalance.
    pub fn balance(&self) -> f64 {
        self.balance + self.launch_balance
    }

    /// CPUSurplusCreditBalance (unlimited mode).
    pub fn surplus(&self) -> f64 {
        self.surplus
    }

    /// CPUSurplusCreditsCharged.
    pub fn charged_surplus(&self) -> f64 {
        self.charged_surplus
    }

    /// Accrues credits up to `now` and spends the CPU time used since the last update.
    /// `usage_usec` is the cgroup's cumulative `usage_usec`; a value lower than the last
    /// one means a new cgroup (counted from zero). A clock that went backwards accrues
    /// nothing.
    pub fn update(&mut self, now: Duration, usage_usec: u64) -> CreditStep {
        let now_secs = now.as_secs_f64();
        let elapsed_hours = ((now_secs - self.last_update_secs) / 3600.0).max(0.0);
        self.last_update_secs = now_secs.max(self.last_update_secs);
        let used = if usage_usec >= self.last_usage_usec {
            usage_usec - self.last_usage_usec
        } else {
            usage_usec
        };
        self.last_usage_usec = usage_usec;
        let earned = self.credits_per_hour * elapsed_hours;
        let spent = used as f64 / USEC_PER_CREDIT;
        // Earning and spending happen together over the interval, so only the net
        // moves the balance (otherwise a full balance spent at baseline would drain).
        let net = earned - spent;
        if net >= 0.0 {
            let repaid = net.min(self.surplus);
            self.surplus -= repaid;
            self.balance = (self.balance + net - repaid).min(self.max_balance);
        } else {
            let mut owed = -net;
            for pool in [&mut self.launch_balance, &mut self.balance] {
                let taken = owed.min(*pool);
                *pool -= taken;
                owed -= taken;
            }
            if self.mode == CreditMode::Unlimited {
                self.surplus += owed;
                if self.surplus > self.max_balance {
                    self.charged_surplus += self.surplus - self.max_balance;
                    self.surplus = self.max_balance;
                }
            }
            // Standard mode: what is left is the overshoot of one control interval,
            // which the throttle bounds; it is not carried as debt.
        }
        CreditStep { earned, spent }
    }

    /// The `cpu.max` to apply for the next `interval` (the caller's control period).
    /// Unlimited: no limit. Standard: the baseline plus what the balance allows over the
    /// interval, so the instance slows down gradually as the balance runs out and sits
    /// at exactly its baseline when it is empty.
    pub fn cpu_max(&self, interval: Duration) -> CpuMax {
        if self.mode == CreditMode::Unlimited {
            return CpuMax::unlimited();
        }
        let vcpus = f64::from(self.vcpus);
        let interval_minutes = interval.as_secs_f64().max(0.001) / 60.0;
        let allowed_vcpus = self.baseline_per_vcpu * vcpus + self.balance() / interval_minutes;
        if allowed_vcpus >= vcpus {
            return CpuMax::unlimited();
        }
        let quota = (allowed_vcpus * DEFAULT_PERIOD_USEC as f64).round() as u64;
        CpuMax {
            quota_usec: Some(quota.max(MIN_QUOTA_USEC)),
            period_usec: DEFAULT_PERIOD_USEC,
        }
    }

    /// The instance stopped: unpaid surplus is charged, the balance is kept (T3 rule).
    pub fn stop(&mut self, now: Duration) {
        self.charged_surplus += self.surplus;
        self.surplus = 0.0;
        self.stopped_at_secs = Some(now.as_secs_f64());
    }

    /// The instance started again: the balance survives a stop of up to seven days; a
    /// new VMM means a new cgroup, so usage counts from zero; nothing accrued meanwhile.
    pub fn start(&mut self, now: Duration) {
        if let Some(stopped) = self.stopped_at_secs.take() {
            if now.as_secs_f64() - stopped > STOPPED_CREDIT_LIFETIME.as_secs_f64() {
                self.balance = 0.0;
            }
        }
        self.last_update_secs = now.as_secs_f64();
        self.last_usage_usec = 0;
    }

    /// A VMM joined the instance's cgroup, whose counter reads `usage_usec`: a stopped
    /// account starts again counting from there; a running one (a restarted supervisor
    /// or VMM in the same cgroup) goes on as it was, since the counter went on too.
    pub fn start_with_usage(&mut self, now: Duration, usage_usec: u64) {
        if self.stopped_at_secs.is_some() {
            self.start(now);
            self.last_usage_usec = usage_usec;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance_types::lookup;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    /// One vCPU busy for one minute.
    const CREDIT_USEC: u64 = 60_000_000;

    fn account(name: &str, mode: CreditMode, clock: &ManualClock) -> CreditAccount {
        CreditAccount::new(lookup(name).unwrap(), mode, clock.now()).unwrap()
    }

    #[test]
    fn idle_instances_accrue_at_the_earn_rate_up_to_the_cap() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let mut credits = account("t3.micro", CreditMode::Standard, &clock);
        assert_eq!(credits.balance(), 0.0, "T3 gets no launch credits");
        clock.advance(HOUR);
        let step = credits.update(clock.now(), 0);
        assert!((step.earned - 12.0).abs() < 1e-9);
        assert!((credits.balance() - 12.0).abs() < 1e-9);
        clock.advance(30 * HOUR);
        credits.update(clock.now(), 0);
        assert_eq!(credits.balance(), 288.0, "capped at 24 hours of earnings");
        // At the cap, running exactly at baseline (2 vCPUs x 10% for an hour = 12
        // credits) keeps the balance full: earning and spending net out.
        clock.advance(HOUR);
        credits.update(clock.now(), 12 * CREDIT_USEC);
        assert!((credits.balance() - 288.0).abs() < 1e-6);
        assert!(CreditAccount::new(
            lookup("m5.large").unwrap(),
            CreditMode::Standard,
            clock.now()
        )
        .is_none());
    }

    #[test]
    fn spending_uses_measured_cpu_time() {
        let clock = ManualClock::new(Duration::ZERO);
        let mut credits = account("t3.large", CreditMode::Standard, &clock);
        clock.advance(10 * HOUR);
        credits.update(clock.now(), 0);
        assert!((credits.balance() - 360.0).abs() < 1e-9);
        // Two vCPUs at 100% for 10 minutes: 20 credits spent, 6 earned.
        clock.advance(10 * MINUTE);
        let step = credits.update(clock.now(), 20 * CREDIT_USEC);
        assert!((step.spent - 20.0).abs() < 1e-9);
        assert!((credits.balance() - 346.0).abs() < 1e-9);
        // A counter that went backwards is a new cgroup: its value is all new usage.
        clock.advance(MINUTE);
        let step = credits.update(clock.now(), CREDIT_USEC);
        assert!((step.spent - 1.0).abs() < 1e-9);
    }

    #[test]
    fn standard_mode_throttles_to_baseline_when_empty_and_gradually_before() {
        let clock = ManualClock::new(Duration::ZERO);
        let mut credits = account("t3.micro", CreditMode::Standard, &clock);
        let interval = Duration::from_secs(1);
        // Empty: 2 vCPUs x 10% = 0.2 of a CPU = 20 ms per 100 ms period.
        assert_eq!(credits.cpu_max(interval).to_string(), "20000 100000");
        clock.advance(HOUR);
        credits.update(clock.now(), 0);
        assert_eq!(credits.cpu_max(interval), CpuMax::unlimited());
        // Burn it down to 0.01 credits (0.6 vCPU-seconds): over a 1 s interval that
        // allows 0.2 + 0.6 vCPUs.
        clock.advance(Duration::from_secs(1));
        let usage =
            (11.99 * CREDIT_USEC as f64) as u64 + (12.0 / 3600.0 * CREDIT_USEC as f64) as u64;
        credits.update(clock.now(), usage);
        assert!(
            (credits.balance() - 0.01).abs() < 1e-6,
            "{}",
            credits.balance()
        );
        let ramp = credits.cpu_max(interval).quota_usec.unwrap();
        assert!((79_000..=81_000).contains(&ramp), "{ramp}");
        // Overspending past zero is clamped: standard mode carries no debt.
        clock.advance(Duration::from_secs(1));
        credits.update(clock.now(), usage + 10 * CREDIT_USEC);
        assert_eq!(credits.balance(), 0.0);
        assert_eq!(credits.surplus(), 0.0);
        assert_eq!(credits.cpu_max(interval).to_string(), "20000 100000");
    }

    #[test]
    fn unlimited_mode_never_throttles_and_counts_surplus() {
        let clock = ManualClock::new(Duration::ZERO);
        let mut credits = account("t3.nano", CreditMode::Unlimited, &clock);
        assert_eq!(credits.cpu_max(Duration::from_secs(1)), CpuMax::unlimited());
        // Two vCPUs flat out for an hour: 120 credits spent, 6 earned.
        clock.advance(HOUR);
        credits.update(clock.now(), 120 * CREDIT_USEC);
        assert_eq!(credits.balance(), 0.0);
        assert!((credits.surplus() - 114.0).abs() < 1e-9);
        // Idle earnings pay the surplus down before the balance grows.
        clock.advance(10 * HOUR);
        credits.update(clock.now(), 120 * CREDIT_USEC);
        assert!((credits.surplus() - 54.0).abs() < 1e-9);
        assert_eq!(credits.balance(), 0.0);
        // Surplus beyond 24 hours of earnings (144) is charged.
        clock.advance(2 * HOUR);
        credits.update(clock.now(), 120 * CREDIT_USEC + 240 * CREDIT_USEC);
        assert_eq!(credits.surplus(), 144.0);
        assert!((credits.charged_surplus() - 138.0).abs() < 1e-9);
        credits.set_mode(CreditMode::Standard);
        assert_eq!(
            credits.cpu_max(Duration::from_secs(1)).to_string(),
            "10000 100000"
        );
    }

    #[test]
    fn launch_credits_are_spent_first_and_not_capped() {
        let clock = ManualClock::new(Duration::ZERO);
        let mut info = *lookup("t3.micro").unwrap();
        let mut burstable = info.burstable.unwrap();
        burstable.launch_credits = 60.0;
        info.burstable = Some(burstable);
        let mut credits = CreditAccount::new(&info, CreditMode::Standard, clock.now()).unwrap();
        assert_eq!(credits.balance(), 60.0);
        clock.advance(30 * HOUR);
        credits.update(clock.now(), 0);
        assert_eq!(credits.balance(), 288.0 + 60.0);
        clock.advance(MINUTE);
        credits.update(clock.now(), 50 * CREDIT_USEC);
        assert!((credits.balance() - (288.0 + 10.0 + 0.2)).abs() < 1e-9);
    }

    #[test]
    fn balance_survives_a_stop_of_up_to_seven_days() {
        let clock = ManualClock::new(Duration::ZERO);
        let mut credits = account("t3.small", CreditMode::Unlimited, &clock);
        clock.advance(HOUR);
        credits.update(clock.now(), 0);
        credits.stop(clock.now());
        clock.advance(6 * 24 * HOUR);
        credits.start(clock.now());
        assert!(
            (credits.balance() - 24.0).abs() < 1e-9,
            "kept, and nothing accrued while stopped"
        );
        // The new VMM's cgroup counts from zero.
        clock.advance(MINUTE);
        let step = credits.update(clock.now(), CREDIT_USEC);
        assert!((step.spent - 1.0).abs() < 1e-9);
        credits.stop(clock.now());
        clock.advance(8 * 24 * HOUR);
        credits.start(clock.now());
        assert_eq!(credits.balance(), 0.0, "lost after seven days");
        let json = serde_json::to_string(&credits).unwrap();
        let back: CreditAccount = serde_json::from_str(&json).unwrap();
        assert_eq!(back, credits);
    }

    #[test]
    fn cpu_max_text_round_trips() {
        for text in ["max 100000", "20000 100000", "5000 50000"] {
            assert_eq!(text.parse::<CpuMax>().unwrap().to_string(), text);
        }
        assert_eq!("max".parse::<CpuMax>().unwrap(), CpuMax::unlimited());
        assert!("".parse::<CpuMax>().is_err());
        assert!("ten 100000".parse::<CpuMax>().is_err());
        assert_eq!(
            "unlimited".parse::<CreditMode>().unwrap(),
            CreditMode::Unlimited
        );
        assert!("burst".parse::<CreditMode>().is_err());
    }
}
