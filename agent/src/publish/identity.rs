//! Which node this is. Devices are often cloned from one SD-card image: their hostname and
//! `/etc/machine-id` are copies, so they would share a node id and an MQTT client id, kick
//! each other off the broker in a loop and merge their data at the hub. The node id is
//! therefore derived from what a clone does not copy, where the hardware has it:
//!
//! 1. `publish.node`, when configured;
//! 2. the board's serial number (`/proc/device-tree/serial-number`: Raspberry Pi and most
//!    device-tree boards);
//! 3. the DMI product UUID (`/sys/class/dmi/id/product_uuid`; placeholder values that
//!    vendors ship, all zeros, all ones, `03000200-0400-0500-0006-000700080009`, are ignored);
//! 4. the lowest permanent MAC address of a physical network interface
//!    (`/sys/class/net/<if>/addr_assign_type` 0 and a `device` link);
//! 5. `/etc/machine-id` (a cloned image copies it: `umbra hub` reports two devices on one id);
//! 6. the hostname.
//!
//! The id is `n` and 12 hex digits of SHA-256 of the source and its value, so it reveals
//! neither; the hostname travels in status as a label for people.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::valid_level;

/// The node's id in topics, where it came from, and its hostname (a label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeId {
    pub id: String,
    pub source: &'static str,
    pub hostname: String,
}

/// Placeholder DMI UUIDs firmware ships instead of a real one.
const BOGUS_UUIDS: [&str; 3] = [
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
];

impl NodeId {
    /// The node id of this machine (`configured`: `publish.node`, may be empty).
    pub fn resolve(configured: &str) -> NodeId {
        NodeId::resolve_in(Path::new("/"), configured)
    }

    /// As [`resolve`](Self::resolve), reading the system files below `root` (tests).
    pub fn resolve_in(root: &Path, configured: &str) -> NodeId {
        let at = |p: &str| root.join(p.trim_start_matches('/'));
        let hostname = read(&at("/proc/sys/kernel/hostname")).unwrap_or_default();
        if !configured.is_empty() {
            return NodeId {
                id: configured.to_string(),
                source: "config",
                hostname,
            };
        }
        let serial = read(&at("/proc/device-tree/serial-number"))
            .map(|s| s.trim_matches(char::from(0)).to_string())
            .filter(|s| !s.is_empty() && s.chars().any(|c| c != '0'));
        let uuid = read(&at("/sys/class/dmi/id/product_uuid"))
            .map(|u| u.to_ascii_lowercase())
            .filter(|u| !u.is_empty() && !BOGUS_UUIDS.contains(&u.as_str()));
        let found = serial
            .map(|v| ("device-tree-serial", v))
            .or_else(|| uuid.map(|v| ("dmi-product-uuid", v)))
            .or_else(|| permanent_mac(&at("/sys/class/net")).map(|v| ("mac", v)))
            .or_else(|| {
                read(&at("/etc/machine-id"))
                    .filter(|m| !m.is_empty())
                    .map(|v| ("machine-id", v))
            });
        match found {
            Some((source, value)) => NodeId {
                id: derive(source, &value),
                source,
                hostname,
            },
            None => NodeId {
                id: if valid_level(&hostname) {
                    hostname.clone()
                } else {
                    "node".into()
                },
                source: "hostname",
                hostname,
            },
        }
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read(p)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

fn derive(source: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"umbra-node-v1\0");
    h.update(source.as_bytes());
    h.update(b"\0");
    h.update(value.as_bytes());
    let d = h.finalize();
    let mut id = String::from("n");
    for b in &d[..6] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The lowest permanent MAC address among physical interfaces.
fn permanent_mac(net: &Path) -> Option<String> {
    let mut macs: Vec<String> = std::fs::read_dir(net)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p: &PathBuf| p.join("device").exists())
        .filter(|p| read(&p.join("addr_assign_type")).as_deref() == Some("0"))
        .filter_map(|p| read(&p.join("address")))
        .filter(|m| m.len() == 17 && m != "00:00:00:00:00:00")
        .collect();
    macs.sort();
    macs.into_iter().next()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn machine(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, v) in files {
            let path = d.path().join(p.trim_start_matches('/'));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, v).unwrap();
        }
        d
    }

    #[test]
    fn clones_of_one_image_get_different_ids_from_their_hardware() {
        let image = [
            ("/etc/machine-id", "4c4c4544003957108052b4c04f384e33\n"),
            ("/proc/sys/kernel/hostname", "edge\n"),
        ];
        let a = machine(&[
            image[0],
            image[1],
            ("/proc/device-tree/serial-number", "10000000a1b2c3d4\0"),
        ]);
        let b = machine(&[
            image[0],
            image[1],
            ("/proc/device-tree/serial-number", "10000000ffeeddcc\0"),
        ]);
        let (ia, ib) = (
            NodeId::resolve_in(a.path(), ""),
            NodeId::resolve_in(b.path(), ""),
        );
        assert_ne!(ia.id, ib.id);
        assert_eq!(
            (ia.source, ia.hostname.as_str()),
            ("device-tree-serial", "edge")
        );
        assert!(valid_level(&ia.id) && ia.id.starts_with('n') && ia.id.len() == 13);
        // The same machine gets the same id every time.
        assert_eq!(NodeId::resolve_in(a.path(), "").id, ia.id);
    }

    #[test]
    fn placeholder_uuids_are_skipped_and_machine_id_is_the_fallback() {
        let m = machine(&[
            (
                "/sys/class/dmi/id/product_uuid",
                "03000200-0400-0500-0006-000700080009\n",
            ),
            ("/etc/machine-id", "abc\n"),
        ]);
        assert_eq!(NodeId::resolve_in(m.path(), "").source, "machine-id");
        let m = machine(&[
            (
                "/sys/class/dmi/id/product_uuid",
                "3F2504E0-4F89-11D3-9A0C-0305E82C3301\n",
            ),
            ("/etc/machine-id", "abc\n"),
        ]);
        assert_eq!(NodeId::resolve_in(m.path(), "").source, "dmi-product-uuid");
    }

    #[test]
    fn a_permanent_mac_of_a_physical_nic_counts_a_random_one_does_not() {
        let m = machine(&[
            ("/sys/class/net/eth0/address", "dc:a6:32:01:02:03\n"),
            ("/sys/class/net/eth0/addr_assign_type", "0\n"),
            ("/sys/class/net/eth0/device/x", ""),
            ("/sys/class/net/wlan0/address", "02:11:22:33:44:55\n"),
            ("/sys/class/net/wlan0/addr_assign_type", "1\n"),
            ("/sys/class/net/wlan0/device/x", ""),
            ("/sys/class/net/lo/address", "00:00:00:00:00:00\n"),
            ("/sys/class/net/lo/addr_assign_type", "0\n"),
        ]);
        let id = NodeId::resolve_in(m.path(), "");
        assert_eq!(id.source, "mac");
        assert_eq!(id.id, derive("mac", "dc:a6:32:01:02:03"));
    }

    #[test]
    fn the_configured_name_wins_and_nothing_at_all_means_the_hostname() {
        let m = machine(&[("/proc/sys/kernel/hostname", "edge-7\n")]);
        assert_eq!(NodeId::resolve_in(m.path(), "plant-3").id, "plant-3");
        let id = NodeId::resolve_in(m.path(), "");
        assert_eq!((id.id.as_str(), id.source), ("edge-7", "hostname"));
    }
}
