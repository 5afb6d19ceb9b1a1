//! The seam between the lease lifecycle and a GPU provider.
//!
//! [`VastClient`] is the implementation: against the real API, or against the simulator
//! ([`crate::sim`]), which speaks the same HTTP API, so the code that runs in tests is the code
//! that runs in production. The trait exists so the lifecycle does not depend on HTTP and so
//! another provider could be added behind the same rules.

use std::collections::BTreeMap;
use std::future::Future;

use crate::vast::{
    Billed, CreateOutcome, CreateRequest, Destroyed, Instance, Offer, OfferQuery, PriceIncrease,
    VastClient, VastError,
};

/// What the provisioner needs from a GPU provider. See [`VastClient`] for each call's contract.
pub trait Provider: Send + Sync + 'static {
    /// Searches offers.
    fn search_offers(
        &self,
        query: &OfferQuery,
    ) -> impl Future<Output = Result<Vec<Offer>, VastError>> + Send;
    /// Creates an instance; every outcome that may hide an instance says so.
    fn create_instance(
        &self,
        offer_id: u64,
        req: &CreateRequest,
    ) -> impl Future<Output = CreateOutcome> + Send;
    /// Reads one instance; `None` when it does not exist.
    fn show_instance(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<Instance>, VastError>> + Send;
    /// Lists instances, all pages, optionally by exact label. A failure is an error.
    fn list_instances(
        &self,
        label: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Instance>, VastError>> + Send;
    /// Destroys an instance (idempotent).
    fn destroy_instance(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Destroyed, VastError>> + Send;
    /// The last lines of an instance's log.
    fn instance_logs(
        &self,
        id: u64,
        tail: u32,
    ) -> impl Future<Output = Result<String, VastError>> + Send;
    /// Pending host price increases.
    fn pending_price_increases(
        &self,
    ) -> impl Future<Output = Result<Vec<PriceIncrease>, VastError>> + Send;
    /// Accepts or rejects a pending price increase.
    fn answer_price_increase(
        &self,
        id: u64,
        accept: bool,
    ) -> impl Future<Output = Result<(), VastError>> + Send;
    /// What each instance that billed between `from_s` and `to_s` (Unix seconds) was billed
    /// so far, and up to when, by instance id. A failure is an error, never an empty bill.
    fn instance_charges(
        &self,
        from_s: f64,
        to_s: f64,
    ) -> impl Future<Output = Result<BTreeMap<u64, Billed>, VastError>> + Send;
}

impl Provider for VastClient {
    fn search_offers(
        &self,
        query: &OfferQuery,
    ) -> impl Future<Output = Result<Vec<Offer>, VastError>> + Send {
        VastClient::search_offers(self, query)
    }
    fn create_instance(
        &self,
        offer_id: u64,
        req: &CreateRequest,
    ) -> impl Future<Output = CreateOutcome> + Send {
        VastClient::create_instance(self, offer_id, req)
    }
    fn show_instance(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<Instance>, VastError>> + Send {
        VastClient::show_instance(self, id)
    }
    fn list_instances(
        &self,
        label: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Instance>, VastError>> + Send {
        VastClient::list_instances(self, label)
    }
    fn destroy_instance(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Destroyed, VastError>> + Send {
        VastClient::destroy_instance(self, id)
    }
    fn instance_logs(
        &self,
        id: u64,
        tail: u32,
    ) -> impl Future<Output = Result<String, VastError>> + Send {
        VastClient::instance_logs(self, id, tail)
    }
    fn pending_price_increases(
        &self,
    ) -> impl Future<Output = Result<Vec<PriceIncrease>, VastError>> + Send {
        VastClient::pending_price_increases(self)
    }
    fn answer_price_increase(
        &self,
        id: u64,
        accept: bool,
    ) -> impl Future<Output = Result<(), VastError>> + Send {
        VastClient::answer_price_increase(self, id, accept)
    }
    fn instance_charges(
        &self,
        from_s: f64,
        to_s: f64,
    ) -> impl Future<Output = Result<BTreeMap<u64, Billed>, VastError>> + Send {
        VastClient::instance_charges(self, from_s, to_s)
    }
}
