//! The simulator's offer catalogue: deterministic from a seed.
//!
//! Offer `i` (0-based) is built from `splitmix64(seed, i)` draws, so the same seed always
//! gives the same offers, ids and prices. GPU models cycle through [`MODELS`] so every model is
//! present in any catalogue of six offers or more.
//!
//! Prices follow Vast.ai's units: `dph_base` is USD per hour for the whole offer,
//! `storage_cost` USD per GB per month (30 days = 720 hours), `inet_up_cost` and
//! `inet_down_cost` USD per GB, `gpu_ram` and `cpu_ram` MB. `dph_total` is computed per search,
//! as `dph_base + allocated_storage * storage_cost / 720` (on-demand) or with `min_bid` in
//! place of `dph_base` (interruptible).

use serde_json::{Value, json};

/// A GPU model the catalogue offers: name, memory per GPU (MB), USD per GPU-hour, DLPerf per
/// GPU, compute capability.
pub const MODELS: &[(&str, u32, f64, f64, u32)] = &[
    ("RTX 3090", 24576, 0.22, 30.1, 860),
    ("RTX 4090", 24564, 0.35, 45.1, 890),
    ("RTX A6000", 49140, 0.48, 38.0, 860),
    ("L40S", 46068, 0.79, 52.3, 890),
    ("A100 SXM4", 81920, 1.10, 80.4, 800),
    ("H100 SXM", 81559, 2.20, 140.2, 900),
];

const GEO: &[&str] =
    &["California, US", "Texas, US", "Quebec, CA", "Netherlands, NL", "Sweden, SE"];
const GPU_COUNTS: &[u32] = &[1, 1, 1, 2, 2, 4, 8];

/// One offer of the catalogue.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOffer {
    /// The offer (ask) id.
    pub id: u64,
    /// Machine id.
    pub machine_id: u64,
    /// Host id.
    pub host_id: u64,
    /// GPU model.
    pub gpu_name: &'static str,
    /// GPUs.
    pub num_gpus: u32,
    /// Memory per GPU, MB.
    pub gpu_ram: u32,
    /// Compute price, USD per hour.
    pub dph_base: f64,
    /// Storage price, USD per GB per month.
    pub storage_cost: f64,
    /// Upload price, USD per GB.
    pub inet_up_cost: f64,
    /// Download price, USD per GB.
    pub inet_down_cost: f64,
    /// Lowest interruptible price, USD per hour.
    pub min_bid: f64,
    /// Reliability, 0 to 1.
    pub reliability: f64,
    /// DLPerf score.
    pub dlperf: f64,
    /// Compute capability, e.g. 890.
    pub compute_cap: u32,
    /// Location.
    pub geolocation: &'static str,
    /// Disk on the machine, GB.
    pub disk_space: f64,
    /// Whether the host is verified.
    pub verified: bool,
}

/// SplitMix64: a tiny, well-known generator; one draw per (seed, stream, index).
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw in [0, 1).
fn unit(seed: u64, i: u64, stream: u64) -> f64 {
    let bits = splitmix64(seed ^ splitmix64(i.wrapping_mul(31).wrapping_add(stream)));
    // 53 random bits make an exact f64 in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
    u
}

fn round_to(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

/// Builds `count` offers from `seed`.
pub fn catalogue(seed: u64, count: usize) -> Vec<SimOffer> {
    (0..count)
        .map(|idx| {
            let i = idx as u64;
            let model = MODELS[idx % MODELS.len()];
            let pick = |stream: u64, len: usize| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let k = (unit(seed, i, stream) * len as f64) as usize;
                k.min(len - 1)
            };
            let num_gpus = GPU_COUNTS[pick(1, GPU_COUNTS.len())];
            let price_factor = 0.85 + 0.40 * unit(seed, i, 2);
            let dph_base = round_to(model.2 * f64::from(num_gpus) * price_factor, 4);
            SimOffer {
                id: 1_000_000 + i * 7919 + (splitmix64(seed) % 7_000),
                machine_id: 10_000 + i * 13 + (splitmix64(seed.wrapping_add(1)) % 1_000),
                host_id: 50_000 + (i % 17) * 101,
                gpu_name: model.0,
                num_gpus,
                gpu_ram: model.1,
                dph_base,
                storage_cost: round_to(0.05 + 0.25 * unit(seed, i, 3), 4),
                inet_up_cost: round_to(0.02 * unit(seed, i, 4), 4),
                inet_down_cost: round_to(0.02 * unit(seed, i, 5), 4),
                min_bid: round_to(dph_base * (0.40 + 0.30 * unit(seed, i, 6)), 4),
                reliability: round_to(0.95 + 0.049 * unit(seed, i, 7), 4),
                dlperf: round_to(model.3 * f64::from(num_gpus), 1),
                compute_cap: model.4,
                geolocation: GEO[pick(8, GEO.len())],
                disk_space: round_to(100.0 + 900.0 * unit(seed, i, 9), 0),
                verified: unit(seed, i, 10) < 0.9,
            }
        })
        .collect()
}

impl SimOffer {
    /// Storage for `gb` GB, USD per hour.
    pub fn storage_per_hour(&self, gb: f64) -> f64 {
        gb * self.storage_cost / 720.0
    }

    /// The offer as search returns it, priced for `allocated_storage` GB, on-demand or bid.
    /// A listed offer is always shown as rentable and not rented (a double sale shows a sold one so).
    pub fn to_json(&self, allocated_storage: f64, bid: bool) -> Value {
        let storage_hour = self.storage_per_hour(allocated_storage);
        let compute = if bid { self.min_bid } else { self.dph_base };
        let dph_total = round_to(compute + storage_hour, 6);
        let gpu_total_ram = self.gpu_ram * self.num_gpus;
        let score = round_to(self.dlperf / dph_total.max(0.01) * self.reliability, 1);
        json!({
            "id": self.id, "ask_contract_id": self.id, "bundle_id": self.id,
            "machine_id": self.machine_id, "host_id": self.host_id,
            "gpu_name": self.gpu_name, "num_gpus": self.num_gpus,
            "gpu_ram": self.gpu_ram, "gpu_total_ram": gpu_total_ram, "gpu_frac": 1.0,
            "gpu_display_active": false, "gpu_arch": "nvidia",
            "cpu_cores": 8 * self.num_gpus, "cpu_cores_effective": f64::from(8 * self.num_gpus),
            "cpu_ram": 32_000 * self.num_gpus, "cpu_ghz": 3.5, "cpu_name": "AMD EPYC 7B13",
            "disk_space": self.disk_space, "disk_bw": 2000.0, "disk_name": "nvme",
            "dph_base": self.dph_base, "dph_total": dph_total,
            "storage_cost": self.storage_cost, "storage_total_cost": round_to(storage_hour, 6),
            "inet_up_cost": self.inet_up_cost, "inet_down_cost": self.inet_down_cost,
            "inet_up": 800.0, "inet_down": 900.0,
            "min_bid": self.min_bid, "is_bid": bid,
            "reliability": self.reliability, "reliability2": self.reliability,
            "dlperf": self.dlperf, "dlperf_per_dphtotal": round_to(self.dlperf / dph_total.max(0.01), 2),
            "score": score, "total_flops": self.dlperf * 2.0,
            "verified": self.verified,
            "verification": if self.verified { "verified" } else { "unverified" },
            "rentable": true, "rented": false, "external": false, "hosting_type": 0,
            "geolocation": self.geolocation, "duration": 2_592_000.0, "end_date": 1_893_456_000.0,
            "cuda_max_good": 12.8, "driver_version": "570.124.06", "compute_cap": self.compute_cap,
            "pci_gen": 4.0, "pcie_bw": 25.0, "direct_port_count": 10, "static_ip": true,
            "has_avx": 1, "vms_enabled": false, "ubuntu_version": "22.04",
            "search": {
                "gpuCostPerHour": compute, "diskHour": round_to(storage_hour, 6),
                "totalHour": dph_total, "discountTotalHour": 0, "discountedTotalPerHour": dph_total
            },
            "discounted_dph_total": dph_total, "credit_discount_max": 0.15
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a = catalogue(7, 24);
        assert_eq!(a, catalogue(7, 24));
        assert_ne!(a, catalogue(8, 24));
        let ids: std::collections::BTreeSet<_> = a.iter().map(|o| o.id).collect();
        assert_eq!(ids.len(), 24, "ids are unique");
        for m in MODELS {
            assert!(a.iter().any(|o| o.gpu_name == m.0));
        }
        for o in &a {
            assert!(o.dph_base > 0.0 && o.min_bid < o.dph_base && o.storage_cost > 0.0);
        }
    }

    #[test]
    fn total_price_formula() {
        let o = &catalogue(1, 1)[0];
        let v = o.to_json(10.0, false);
        let expect = o.dph_base + 10.0 * o.storage_cost / 720.0;
        assert!((v["dph_total"].as_f64().unwrap() - expect).abs() < 1e-6);
        let b = o.to_json(10.0, true);
        assert!(
            (b["dph_total"].as_f64().unwrap() - (o.min_bid + 10.0 * o.storage_cost / 720.0)).abs()
                < 1e-6
        );
    }
}
