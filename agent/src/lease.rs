//! The node's Lease in `kube-node-lease`: renewed every heartbeat, it is
//! how the control plane tells a live node from a dead one.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

/// Namespace of node leases.
pub const NAMESPACE: &str = "kube-node-lease";

/// A lease renewal failed.
#[derive(Debug, thiserror::Error)]
#[error("renewing lease {node}: {source}")]
pub struct LeaseError {
    node: String,
    #[source]
    source: kube::Error,
}

/// The time now as a `MicroTime` (RFC 3339 with microseconds).
fn micro_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Renews (creating at first) the lease of `node`, valid for `duration`.
pub async fn renew(api: &Api<Lease>, node: &str, duration: Duration) -> Result<(), LeaseError> {
    let err = |source| LeaseError {
        node: node.to_string(),
        source,
    };
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let spec = json!({
        "holderIdentity": node,
        "leaseDurationSeconds": seconds,
        "renewTime": micro_now(),
    });
    match api
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": node, "namespace": NAMESPACE},
                "spec": spec,
            }))
            .map_err(|e| err(kube::Error::SerdeError(e)))?;
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                // Created meanwhile: the next renewal patches it.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(err(e)),
            }
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_has_six_fraction_digits() {
        let t = micro_now();
        let fraction = t.split('.').nth(1).unwrap();
        assert_eq!(fraction.len(), 7, "{t}");
        assert!(t.ends_with('Z'));
        assert!(t.parse::<jiff::Timestamp>().is_ok());
    }
}
