//! The simulator's world: offers, instances on their state machine, billing and its ledger.
//!
//! Instance life, in simulated seconds from creation (defaults in [`SimTiming`]):
//!
//! ```text
//! actual_status:  null ──provision_s──> loading ──loading_s──> running
//!                   │                      │
//!                   │ (double sale)        ├──(stuck_loading)──> loading forever
//!                   └──> offline           └──(exited/offline)──> exited | offline
//! ```
//!
//! Billing is per second. Storage (`disk * storage_cost / 720` per hour) bills from creation
//! until destroy, in every state, stopped included. Compute (`dph_base`, or the bid for an
//! interruptible instance) bills while the instance is `loading` or `running` and not stopped.
//! Destroy ends all billing at once; the instance still reads back for `destroy_lag_s` and is
//! then gone, and its offer returns to the market. The ledger keeps every instance ever
//! created, destroyed or not; the charges route reads it.
//!
//! The dead-man's switch: an instance whose `onstart` carries `DROVER_DEADMAN_AT=<unix s>`
//! (and optionally `DROVER_DEADMAN_AFTER_S=<s>`) runs that script when it reaches `running`;
//! the script takes the earlier of that moment and its start plus the delay, checks the time
//! every [`POLL_S`](drover_vast::deadman::POLL_S) seconds and, once past it, destroys its own instance with the
//! instance's scoped key. The simulator models exactly that: the instance is destroyed at the
//! first check at or after the moment, without any client call.
//!
//! The clock of that world (events, accrual, the switch firing) is in `life`; the world's
//! shape, creation and the routes' reads and writes are here.

use std::collections::{BTreeMap, HashMap};

use drover_vast::deadman::{AFTER_MARKER, AT_MARKER, POLL_S as DEADMAN_POLL_S};
use serde::Serialize;
use serde_json::{Value, json};

use super::catalogue::SimOffer;
use super::faults::{Faults, take};

mod life;

/// Timings of the instance state machine, in simulated seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimTiming {
    /// From creation to `loading`. Default 5.
    pub provision_s: f64,
    /// From `loading` to `running`. Default 20.
    pub loading_s: f64,
    /// How long a destroyed instance still reads back. Default 2.
    pub destroy_lag_s: f64,
    /// From `running` to a pending price increase taking effect. Default 30.
    pub price_increase_after_s: f64,
    /// From a `late_create` to the instance existing. Default 20.
    pub late_create_s: f64,
}

impl Default for SimTiming {
    fn default() -> Self {
        Self {
            provision_s: 5.0,
            loading_s: 20.0,
            destroy_lag_s: 2.0,
            price_increase_after_s: 30.0,
            late_create_s: 20.0,
        }
    }
}

/// What an instance will do on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Normal,
    StuckLoading,
    End(&'static str),
    /// Sold twice: goes offline when it should start loading.
    Ghost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Provisioning,
    Loading,
    Running,
    Ended(&'static str),
}

#[derive(Clone, Debug)]
pub(crate) struct SimInstance {
    id: u64,
    offer: SimOffer,
    label: Option<String>,
    image: String,
    disk: f64,
    env: Vec<(String, String)>,
    onstart: Option<String>,
    bid: Option<f64>,
    created_s: f64,
    phase: Phase,
    fate: Fate,
    stopped: bool,
    compute_per_hour: f64,
    destroyed_s: Option<f64>,
    null_reads: u32,
    instance_api_key: String,
    jupyter_token: String,
    /// The dead-man's switch its `onstart` carries, if any: (delay from start, latest moment).
    deadman: Option<(f64, f64)>,
    /// When it reached `running` (its `onstart` started).
    running_s: Option<f64>,
}

impl SimInstance {
    /// When the dead-man's switch script destroys it: the first check at or after its moment.
    fn self_destroy_s(&self) -> Option<f64> {
        let ((after, latest), started) = (self.deadman?, self.running_s?);
        let at = latest.min(started + after);
        let checks = ((at - started) / DEADMAN_POLL_S).ceil().max(0.0);
        Some(started + checks * DEADMAN_POLL_S)
    }
}

/// What the simulator billed one instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedgerEntry {
    /// The instance (contract) id.
    pub contract_id: u64,
    /// The offer it was created from.
    pub offer_id: u64,
    /// Its label at creation.
    pub label: Option<String>,
    /// Created, simulated Unix seconds.
    pub created_s: f64,
    /// When billing ended (destroy), or `None` while it still bills.
    pub ended_s: Option<f64>,
    /// Compute billed, USD.
    pub compute_usd: f64,
    /// Storage billed, USD.
    pub storage_usd: f64,
    /// Simulated seconds accounted so far.
    pub accrued_to_s: f64,
}

impl LedgerEntry {
    /// Everything billed for this instance, USD.
    pub fn total_usd(&self) -> f64 {
        self.compute_usd + self.storage_usd
    }

    /// Whether the instance still bills.
    pub fn is_live(&self) -> bool {
        self.ended_s.is_none()
    }
}

/// The simulator's billing ledger: one entry per instance ever created.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ledger {
    /// Entries by contract id, ascending.
    pub entries: Vec<LedgerEntry>,
}

impl Ledger {
    /// Instances that still bill.
    pub fn live(&self) -> Vec<&LedgerEntry> {
        self.entries.iter().filter(|e| e.is_live()).collect()
    }

    /// Everything billed, USD.
    pub fn total_usd(&self) -> f64 {
        self.entries.iter().map(LedgerEntry::total_usd).sum()
    }

    /// Entries whose label is `label`.
    pub fn with_label(&self, label: &str) -> Vec<&LedgerEntry> {
        self.entries.iter().filter(|e| e.label.as_deref() == Some(label)).collect()
    }
}

/// A pending host price increase.
#[derive(Clone, Debug)]
struct PendingIncrease {
    id: u64,
    contract_id: u64,
    factor: f64,
    effective_s: f64,
    answer: Option<bool>,
}

/// Counters of what the simulator was sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// API requests received (control routes excluded).
    pub requests: u64,
    /// Requests that carried `api_key=` in their URL (a leak the real CLI once had).
    pub api_key_in_url: u64,
    /// Requests refused for authentication.
    pub auth_failures: u64,
    /// Faults fired, by name.
    pub faults_fired: BTreeMap<String, u64>,
    /// Creates answered with a contract, errors included.
    pub contracts_created: u64,
    /// Destroys received.
    pub destroys: u64,
    /// Instances destroyed by their own dead-man's switch.
    pub self_destroyed: u64,
}

/// The whole simulated account.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) offers: Vec<SimOffer>,
    sold: BTreeMap<u64, u64>,
    instances: BTreeMap<u64, SimInstance>,
    ledger: BTreeMap<u64, LedgerEntry>,
    increases: Vec<PendingIncrease>,
    /// Creates answered 504 that are applied upstream later: when, which offer, what.
    late: Vec<(f64, u64, CreateArgs)>,
    next_contract: u64,
    next_increase: u64,
    pub(crate) faults: Faults,
    pub(crate) stats: Stats,
    pub(crate) timing: SimTiming,
    pub(crate) log_files: HashMap<String, (u32, String)>,
    seed: u64,
}

/// A create the world refused or accepted, in API terms.
pub(crate) enum CreateResult {
    Ok { contract: u64, instance_api_key: String },
    LowBid { contract: u64, min_bid: f64 },
    OfferGone { status: u16 },
}

/// The validated fields of a create request.
#[derive(Debug)]
pub(crate) struct CreateArgs {
    pub(crate) image: String,
    pub(crate) disk: f64,
    pub(crate) label: Option<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) onstart: Option<String>,
    pub(crate) price: Option<f64>,
}

impl World {
    pub(crate) fn new(offers: Vec<SimOffer>, faults: Faults, timing: SimTiming, seed: u64) -> Self {
        Self {
            offers,
            sold: BTreeMap::new(),
            instances: BTreeMap::new(),
            ledger: BTreeMap::new(),
            increases: Vec::new(),
            late: Vec::new(),
            next_contract: 30_000_000 + (seed % 1000) * 1000,
            next_increase: 1,
            faults,
            stats: Stats::default(),
            timing,
            log_files: HashMap::new(),
            seed,
        }
    }

    pub(crate) fn fired(&mut self, name: &str) {
        *self.stats.faults_fired.entry(name.to_owned()).or_default() += 1;
    }

    fn token(&self, n: u64, salt: u64) -> String {
        let mut x = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
        let mut s = String::with_capacity(64);
        for _ in 0..4 {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            s.push_str(&format!("{:016x}", z ^ (z >> 31)));
        }
        s
    }

    /// Offers a search may see: unsold ones, and with `double_sale` the sold ones too.
    pub(crate) fn listed_offers(&self) -> Vec<&SimOffer> {
        self.offers
            .iter()
            .filter(|o| !self.sold.contains_key(&o.id) || self.faults.double_sale)
            .collect()
    }

    pub(crate) fn create_later(&mut self, offer_id: u64, args: CreateArgs, now: f64) {
        self.advance(now);
        let at = now + self.timing.late_create_s;
        self.late.push((at, offer_id, args));
    }

    pub(crate) fn create(&mut self, offer_id: u64, args: CreateArgs, now: f64) -> CreateResult {
        self.advance(now);
        self.create_now(offer_id, args, now)
    }

    fn create_now(&mut self, offer_id: u64, args: CreateArgs, now: f64) -> CreateResult {
        if take(&mut self.faults.offer_gone) {
            self.fired("offer_gone");
            // Sold to someone else between search and create.
            self.offers.retain(|o| o.id != offer_id);
            let odd = self.stats.faults_fired.get("offer_gone").copied().unwrap_or(0) % 2 == 0;
            return CreateResult::OfferGone { status: if odd { 410 } else { 404 } };
        }
        let Some(offer) = self.offers.iter().find(|o| o.id == offer_id).cloned() else {
            return CreateResult::OfferGone { status: 404 };
        };
        let already_sold = self.sold.contains_key(&offer_id);
        if already_sold && !self.faults.double_sale {
            return CreateResult::OfferGone { status: 404 };
        }
        let mut fate = Fate::Normal;
        if already_sold {
            self.fired("double_sale");
            fate = Fate::Ghost;
        } else if take(&mut self.faults.stuck_loading) {
            self.fired("stuck_loading");
            fate = Fate::StuckLoading;
        } else if take(&mut self.faults.exited) {
            self.fired("exited");
            fate = Fate::End("exited");
        } else if take(&mut self.faults.offline) {
            self.fired("offline");
            fate = Fate::End("offline");
        }
        let mut low_bid = None;
        if let Some(bid) = args.price {
            if take(&mut self.faults.low_bid) {
                self.fired("low_bid");
                if let Some(o) = self.offers.iter_mut().find(|o| o.id == offer_id) {
                    o.min_bid = o.min_bid.max(bid * 1.25);
                }
            }
            let min_bid = self.offers.iter().find(|o| o.id == offer_id).map_or(0.0, |o| o.min_bid);
            if bid < min_bid {
                low_bid = Some(min_bid);
            }
        }
        let null_reads = u32::from(take(&mut self.faults.null_first_read));
        if null_reads > 0 {
            self.fired("null_first_read");
        }
        let id = self.next_contract;
        self.next_contract += 1;
        let instance_api_key = self.token(id, 1);
        let jupyter_token = self.token(id, 2);
        let compute_per_hour =
            args.price.unwrap_or(offer.dph_base) * self.faults.underquote.unwrap_or(1.0);
        let deadman = args.onstart.as_deref().and_then(|o| {
            let latest = marked_number(o, AT_MARKER)?;
            Some((marked_number(o, AFTER_MARKER).unwrap_or(f64::INFINITY), latest))
        });
        self.sold.insert(offer_id, id);
        self.ledger.insert(
            id,
            LedgerEntry {
                contract_id: id,
                offer_id,
                label: args.label.clone(),
                created_s: now,
                ended_s: None,
                compute_usd: 0.0,
                storage_usd: 0.0,
                accrued_to_s: now,
            },
        );
        self.instances.insert(
            id,
            SimInstance {
                id,
                offer,
                label: args.label,
                image: args.image,
                disk: args.disk,
                env: args.env,
                onstart: args.onstart,
                bid: args.price,
                created_s: now,
                phase: Phase::Provisioning,
                fate,
                stopped: low_bid.is_some(),
                compute_per_hour,
                destroyed_s: None,
                null_reads,
                instance_api_key: instance_api_key.clone(),
                jupyter_token,
                deadman,
                running_s: None,
            },
        );
        self.stats.contracts_created += 1;
        match low_bid {
            Some(min_bid) => CreateResult::LowBid { contract: id, min_bid },
            None => CreateResult::Ok { contract: id, instance_api_key },
        }
    }

    /// One instance as `show instance` returns it; `None` if it does not exist (or a
    /// `null_first_read` fault answers for it).
    pub(crate) fn show(&mut self, id: u64, now: f64) -> Option<Value> {
        self.advance(now);
        let inst = self.instances.get_mut(&id)?;
        if inst.null_reads > 0 {
            inst.null_reads -= 1;
            return None;
        }
        let inst = self.instances.get(&id)?;
        Some(self.instance_json(inst, now))
    }

    /// All instances that still read back, ascending by id.
    pub(crate) fn list(&mut self, now: f64) -> Vec<Value> {
        self.advance(now);
        self.instances.values().map(|i| self.instance_json(i, now)).collect()
    }

    fn instance_json(&self, i: &SimInstance, now: f64) -> Value {
        let (actual, intended, cur) = match (i.destroyed_s, i.stopped, i.phase) {
            (Some(_), _, _) => (Value::from("exited"), "stopped", "stopped"),
            (None, true, _) => (Value::from("exited"), "stopped", "stopped"),
            (None, false, Phase::Provisioning) => (Value::Null, "running", "running"),
            (None, false, Phase::Loading) => (Value::from("loading"), "running", "running"),
            (None, false, Phase::Running) => (Value::from("running"), "running", "running"),
            (None, false, Phase::Ended(s)) => (Value::from(s), "running", "stopped"),
        };
        let running = actual == "running";
        let storage_hour = i.offer.storage_per_hour(i.disk);
        let status_msg = match actual.as_str() {
            None => "Creating instance",
            Some("loading") => "Pulling image",
            Some("running") => "Instance running",
            Some(_) if i.stopped => "Instance stopped: bid below the current minimum",
            Some(_) => "Instance is not running",
        };
        let env: Vec<Value> = i.env.iter().map(|(k, v)| json!([k, v])).collect();
        let uptime_mins = if running { ((now - i.created_s) / 60.0).max(0.0) } else { 0.0 };
        json!({
            "id": i.id, "label": i.label, "machine_id": i.offer.machine_id, "host_id": i.offer.host_id,
            "actual_status": actual, "intended_status": intended,
            "cur_state": cur, "next_state": cur, "status_msg": status_msg,
            "ssh_host": "ssh5.vast.example", "ssh_port": 20000 + (i.id % 10_000),
            "public_ipaddr": "203.0.113.42",
            "ports": if running { json!({"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "20000"}]}) } else { json!({}) },
            "dph_base": i.compute_per_hour, "dph_total": i.compute_per_hour + storage_hour,
            "storage_cost": i.offer.storage_cost, "storage_total_cost": storage_hour,
            "inet_up_cost": i.offer.inet_up_cost, "inet_down_cost": i.offer.inet_down_cost,
            "is_bid": i.bid.is_some(), "min_bid": i.offer.min_bid,
            "start_date": i.created_s, "end_date": i.created_s + 2_592_000.0,
            "image_uuid": i.image, "image_runtype": "ssh",
            "extra_env": env, "onstart": i.onstart, "jupyter_token": i.jupyter_token,
            "local_ipaddrs": "10.0.0.5 \n",
            "num_gpus": i.offer.num_gpus, "gpu_name": i.offer.gpu_name, "gpu_ram": i.offer.gpu_ram,
            "gpu_util": 0.0,
            "gpu_totalram": i.offer.gpu_ram * i.offer.num_gpus,
            "cpu_cores_effective": f64::from(8 * i.offer.num_gpus), "cpu_ram": 32_000 * i.offer.num_gpus,
            "cpu_util": 0.0, "mem_usage": 0.0,
            "disk_space": i.disk, "disk_usage": 0.0, "disk_util": 0.0,
            "inet_up": 800.0, "inet_down": 900.0, "reliability2": i.offer.reliability,
            "verification": if i.offer.verified { "verified" } else { "unverified" },
            "geolocation": i.offer.geolocation, "uptime_mins": uptime_mins,
            "template_id": Value::Null, "template_name": Value::Null, "volume_info": Value::Null,
            "compute_cap": i.offer.compute_cap, "cuda_max_good": 12.8,
        })
    }

    /// Destroys an instance: `Some(true)` done, `Some(false)` a `destroy_noop` fault swallowed
    /// it, `None` no such instance.
    pub(crate) fn destroy(&mut self, id: u64, now: f64) -> Option<bool> {
        self.advance(now);
        self.stats.destroys += 1;
        let inst = self.instances.get_mut(&id)?;
        if inst.destroyed_s.is_some() {
            return None;
        }
        if take(&mut self.faults.destroy_noop) {
            self.fired("destroy_noop");
            return Some(false);
        }
        inst.destroyed_s = Some(now);
        if let Some(entry) = self.ledger.get_mut(&id) {
            entry.ended_s = Some(now);
        }
        self.increases.retain(|p| p.contract_id != id);
        // Released offers return to the market.
        self.sold.retain(|_, c| *c != id);
        Some(true)
    }

    /// Stops (`running == false`) or starts an instance, or relabels it.
    pub(crate) fn manage(
        &mut self,
        id: u64,
        running: Option<bool>,
        label: Option<String>,
        now: f64,
    ) -> bool {
        self.advance(now);
        let Some(inst) = self.instances.get_mut(&id) else { return false };
        if inst.destroyed_s.is_some() {
            return false;
        }
        if let Some(r) = running {
            inst.stopped = !r;
        }
        if let Some(l) = label {
            inst.label = Some(l);
        }
        true
    }

    pub(crate) fn pending_increases(&mut self, now: f64) -> Vec<Value> {
        self.advance(now);
        self.increases
            .iter()
            .filter(|p| p.answer.is_none())
            .filter_map(|p| {
                let inst = self.instances.get(&p.contract_id)?;
                let old = inst.compute_per_hour / 3600.0;
                Some(json!({
                    "id": p.id, "contract_id": p.contract_id, "machine_id": inst.offer.machine_id,
                    "old_gpu_costpersec": old, "new_gpu_costpersec": old * p.factor,
                    "effective_date": p.effective_s,
                }))
            })
            .collect()
    }

    pub(crate) fn answer_increase(&mut self, id: u64, accept: bool, now: f64) -> bool {
        self.advance(now);
        match self.increases.iter_mut().find(|p| p.id == id && p.answer.is_none()) {
            Some(p) => {
                p.answer = Some(accept);
                true
            }
            None => false,
        }
    }

    pub(crate) fn ledger(&mut self, now: f64) -> Ledger {
        self.advance(now);
        Ledger { entries: self.ledger.values().cloned().collect() }
    }

    /// Instance charges as `GET /api/v0/charges/` lists them: one per instance that billed
    /// in `[from, to]`, its amount so far.
    pub(crate) fn charges(&mut self, from: f64, to: f64, now: f64) -> Vec<Value> {
        self.advance(now);
        let counted_to = now - self.faults.bill_lag_s.unwrap_or(0.0);
        self.ledger
            .values()
            .filter(|e| e.created_s <= to && e.ended_s.is_none_or(|end| end >= from))
            .map(|e| {
                let end = e.ended_s.unwrap_or(e.accrued_to_s);
                // A lagging bill counts the instance's share of the time up to `counted_to`.
                let (amount, end) = if end <= counted_to {
                    (e.total_usd(), end)
                } else {
                    let counted = (counted_to - e.created_s).max(0.0);
                    let share = counted / (end - e.created_s).max(f64::MIN_POSITIVE);
                    (e.total_usd() * share.min(1.0), e.created_s + counted)
                };
                json!({
                    "type": "instance", "source": e.contract_id.to_string(),
                    "instance_id": e.contract_id, "amount": amount,
                    "description": format!("Instance {} GPU and storage charges", e.contract_id),
                    "start": e.created_s, "end": end,
                })
            })
            .collect()
    }

    pub(crate) fn log_text(&self, id: u64) -> String {
        match self.instances.get(&id) {
            Some(i) => format!(
                "[sim] instance {} on machine {}\n[sim] pulling {}\n[sim] image ready\n[sim] onstart finished\n",
                i.id, i.offer.machine_id, i.image
            ),
            None => String::new(),
        }
    }

    pub(crate) fn exists(&mut self, id: u64, now: f64) -> bool {
        self.advance(now);
        self.instances.get(&id).is_some_and(|i| i.destroyed_s.is_none())
    }

    /// The key an instance was handed (for tests that check it is redacted).
    pub(crate) fn instance_key(&self, id: u64) -> Option<&str> {
        self.instances.get(&id).map(|i| i.instance_api_key.as_str())
    }
}

/// The number after `marker` in an `onstart` script, if it carries one.
fn marked_number(onstart: &str, marker: &str) -> Option<f64> {
    let rest = &onstart[onstart.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u64>().ok().map(|s| {
        #[allow(clippy::cast_precision_loss)]
        let s = s as f64;
        s
    })
}
