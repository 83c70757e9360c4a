//! process.capabilities: the bounding set is cut while still root, then after the uid switch
//! the effective, permitted, inheritable and ambient sets are set exactly as listed.

use std::collections::HashSet;

use caps::{CapSet, Capability as Cap, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// A capability set could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("process.capabilities.{set}: {message}")]
pub struct CapabilitiesError {
    set: &'static str,
    message: String,
}

/// Capabilities this kernel knows (cap_last_cap), falling back to the crate's full list.
fn supported() -> CapsHashSet {
    caps::runtime::thread_all_supported()
}

fn to_caps(list: Option<&Capabilities>) -> CapsHashSet {
    let supported = supported();
    list.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<Cap>().ok())
        .filter(|c| supported.contains(c))
        .collect()
}

/// Drops every capability outside `bounding` from the bounding set (needs CAP_SETPCAP).
pub fn drop_bounding(spec: Option<&LinuxCapabilities>) -> Result<(), CapabilitiesError> {
    let keep = to_caps(spec.and_then(|c| c.bounding().as_ref()));
    for cap in supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| CapabilitiesError {
                set: "bounding",
                message: format!("drop {cap}: {e}"),
            })?;
        }
    }
    Ok(())
}

/// Sets inheritable, effective, permitted, then raises the ambient set.
pub fn apply(spec: Option<&LinuxCapabilities>) -> Result<(), CapabilitiesError> {
    let inheritable = to_caps(spec.and_then(|c| c.inheritable().as_ref()));
    let effective = to_caps(spec.and_then(|c| c.effective().as_ref()));
    let permitted = to_caps(spec.and_then(|c| c.permitted().as_ref()));
    let ambient = to_caps(spec.and_then(|c| c.ambient().as_ref()));
    for (name, set, value) in [
        ("inheritable", CapSet::Inheritable, &inheritable),
        ("effective", CapSet::Effective, &effective),
        ("permitted", CapSet::Permitted, &permitted),
    ] {
        caps::set(None, set, value).map_err(|e| CapabilitiesError {
            set: name,
            message: e.to_string(),
        })?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| CapabilitiesError {
        set: "ambient",
        message: e.to_string(),
    })?;
    // Like runc, an ambient capability that is not also permitted and inheritable is skipped.
    let allowed: HashSet<&Cap> = permitted.intersection(&inheritable).collect();
    for cap in ambient.iter().filter(|c| allowed.contains(c)) {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|e| CapabilitiesError {
            set: "ambient",
            message: format!("raise {cap}: {e}"),
        })?;
    }
    Ok(())
}
