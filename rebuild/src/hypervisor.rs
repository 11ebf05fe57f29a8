//! VM provisioning through libvirt's C library (the `virt` crate) on one
//! connection kept for the whole run: one SSH session to Unraid instead of
//! one per command, typed errors instead of parsed `virsh` output, disks
//! created through libvirt's storage API on the hypervisor itself, and the
//! built-in test driver (`test:///default`, whose state lives only as long
//! as the connection) works with no daemon.

use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use crate::domain::{DISK_FILE, domain_xml, pool_name, pool_xml, volume_xml};
use crate::spec::{ClusterSpec, NodeSpec};

/// What libvirt refused.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// No connection to the hypervisor.
    #[error(
        "cannot connect to libvirt at {uri}; check [libvirt] uri in the spec and that `virsh -c {uri} list` works from here"
    )]
    Connect {
        /// The libvirt URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// A call failed.
    #[error("{action} on {uri}")]
    Call {
        /// What was being done, naming the node.
        action: String,
        /// The libvirt URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// A VM of the node's name exists with another MAC.
    #[error(
        "a VM named {name} exists on {uri} without the MAC {mac}; run with --replace to destroy and recreate it, or rename the node"
    )]
    ForeignDomain {
        /// The VM name.
        name: String,
        /// The libvirt URI.
        uri: String,
        /// The node's MAC.
        mac: String,
    },
    /// The node's VM is missing.
    #[error("no VM named {name} on {uri}; run the rebuild from the start")]
    NoDomain {
        /// The VM name.
        name: String,
        /// The libvirt URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: virt::error::Error,
    },
    /// libvirt refused the domain XML.
    #[error("libvirt refused the domain XML of {name} (see `lifeboat rebuild --plan`)")]
    RefusedXml {
        /// The VM name.
        name: String,
        /// libvirt's error, naming what its schema refused.
        #[source]
        source: virt::error::Error,
    },
}

/// One open libvirt connection.
pub struct Hypervisor {
    connection: Connect,
    uri: String,
}

impl Hypervisor {
    /// Connects to `uri`.
    ///
    /// Fails when libvirt cannot connect (the message is libvirt's).
    pub fn connect(uri: &str) -> Result<Self, HypervisorError> {
        // libvirt's own error printing would repeat every error on stderr.
        virt::error::clear_error_callback();
        let connection = Connect::open(Some(uri)).map_err(|source| HypervisorError::Connect {
            uri: uri.to_owned(),
            source,
        })?;
        Ok(Self {
            connection,
            uri: uri.to_owned(),
        })
    }

    /// Creates the node's disk unless it exists (with `replace`, deletes
    /// and recreates it). Returns what was done.
    ///
    /// Fails when libvirt refuses the pool or the volume.
    pub fn ensure_disk(
        &self,
        spec: &ClusterSpec,
        node: &NodeSpec,
        replace: bool,
    ) -> Result<String, HypervisorError> {
        let pool = match self
            .connection
            .lookup_storage_pool_by_name(&pool_name(node))
        {
            Ok(pool) => pool,
            Err(_) => {
                let pool = self
                    .connection
                    .define_storage_pool_xml(&pool_xml(spec, node), 0)
                    .map_err(self.call(format!(
                        "defining the storage pool for {}'s disk",
                        node.name
                    )))?;
                pool.build(0)
                    .map_err(self.call(format!("creating the disk folder of {}", node.name)))?;
                pool
            }
        };
        if !pool.is_active().unwrap_or(false) {
            pool.create(0)
                .map_err(self.call(format!("starting the storage pool of {}", node.name)))?;
        }
        let outcome = match pool.lookup_storage_vol_by_name(DISK_FILE) {
            Ok(volume) if replace => {
                volume
                    .delete(0)
                    .map_err(self.call(format!("deleting {}'s old disk", node.name)))?;
                self.create_volume(&pool, node)?;
                "replaced"
            }
            Ok(_) => "reused",
            Err(_) => {
                self.create_volume(&pool, node)?;
                "created"
            }
        };
        // The pool only served to create the file: leave no trace of it.
        let _ = pool.destroy();
        let _ = pool.undefine();
        Ok(format!("{outcome} {} GiB disk", node.disk_gib()))
    }

    /// Defines the node's domain (validating the XML against libvirt's
    /// schema) unless a domain of that name with the node's MAC exists;
    /// with `replace` an existing one is destroyed and undefined first.
    ///
    /// Fails when an existing domain of that name has another MAC (and no
    /// `replace`), or libvirt refuses the XML.
    pub fn ensure_domain(
        &self,
        spec: &ClusterSpec,
        node: &NodeSpec,
        replace: bool,
    ) -> Result<String, HypervisorError> {
        if let Ok(existing) = self.connection.lookup_domain_by_name(&node.name) {
            if !replace {
                let xml = existing
                    .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
                    .map_err(self.call(format!("reading the domain XML of {}", node.name)))?;
                if !xml
                    .to_ascii_lowercase()
                    .contains(&node.mac.to_ascii_lowercase())
                {
                    return Err(HypervisorError::ForeignDomain {
                        name: node.name.clone(),
                        uri: self.uri.clone(),
                        mac: node.mac.clone(),
                    });
                }
                return Ok("reused the existing domain".into());
            }
            if existing.is_active().unwrap_or(false) {
                existing
                    .destroy()
                    .map_err(self.call(format!("stopping the old VM {}", node.name)))?;
            }
            existing
                .undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM)
                .or_else(|_| existing.undefine())
                .map_err(self.call(format!("undefining the old VM {}", node.name)))?;
        }
        self.connection
            .define_domain_xml_flags(
                &domain_xml(spec, node),
                virt::sys::VIR_DOMAIN_DEFINE_VALIDATE,
            )
            .map_err(|source| HypervisorError::RefusedXml {
                name: node.name.clone(),
                source,
            })?;
        Ok(if replace {
            "replaced the domain"
        } else {
            "defined the domain"
        }
        .into())
    }

    /// A closure naming a failed call on this connection.
    fn call(&self, action: String) -> impl FnOnce(virt::error::Error) -> HypervisorError + '_ {
        move |source| HypervisorError::Call {
            action,
            uri: self.uri.clone(),
            source,
        }
    }

    /// Starts the node's VM unless it runs.
    ///
    /// Fails when the domain is missing or libvirt cannot start it.
    pub fn start(&self, node: &NodeSpec) -> Result<String, HypervisorError> {
        let domain = self
            .connection
            .lookup_domain_by_name(&node.name)
            .map_err(|source| HypervisorError::NoDomain {
                name: node.name.clone(),
                uri: self.uri.clone(),
                source,
            })?;
        let active = domain
            .is_active()
            .map_err(self.call(format!("asking whether the VM {} runs", node.name)))?;
        if active {
            return Ok("already running".into());
        }
        domain
            .create()
            .map_err(self.call(format!("starting the VM {}", node.name)))?;
        Ok("started".into())
    }

    fn create_volume(&self, pool: &StoragePool, node: &NodeSpec) -> Result<(), HypervisorError> {
        StorageVol::create_xml(pool, &volume_xml(node), 0)
            .map_err(self.call(format!("creating {}'s disk", node.name)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libvirt's built-in test driver validates the real domain XML
    /// against libvirt's schema, defines and starts it, and keeps the state
    /// for the one connection: a second pass reuses what exists.
    #[test]
    fn the_test_driver_accepts_defines_and_starts_the_talos_domain() {
        let spec: ClusterSpec = toml::from_str(
            r#"
            [libvirt]
            uri = "test:///default"
            iso = "/mnt/user/isos/metal-amd64.iso"
            [[node]]
            name = "talos-cp1"
            role = "controlplane"
            mac = "52:54:00:6c:00:01"
            maintenance_address = "127.0.0.1"
            endpoint = "127.0.0.1"
            "#,
        )
        .expect("spec");
        let node = &spec.nodes[0];
        let hypervisor = Hypervisor::connect("test:///default").expect("test driver");
        let disk = hypervisor.ensure_disk(&spec, node, false).expect("disk");
        assert_eq!(disk, "created 32 GiB disk");
        let defined = hypervisor
            .ensure_domain(&spec, node, false)
            .expect("define");
        assert_eq!(defined, "defined the domain");
        assert_eq!(hypervisor.start(node).expect("start"), "started");
        let domain = hypervisor
            .connection
            .lookup_domain_by_name("talos-cp1")
            .expect("defined");
        assert!(domain.is_active().expect("state"));
        let xml = domain.xml_desc(0).expect("xml");
        for part in [
            "machine='q35'",
            "firmware='efi'",
            "host-passthrough",
            "bus='virtio'",
            "metal-amd64.iso",
            "52:54:00:6c:00:01",
        ] {
            assert!(
                xml.contains(part),
                "the defined domain lacks {part}:\n{xml}"
            );
        }
        let again = hypervisor.ensure_domain(&spec, node, false).expect("again");
        assert_eq!(again, "reused the existing domain");
        assert_eq!(hypervisor.start(node).expect("again"), "already running");

        let mut other = node.clone();
        other.mac = "52:54:00:6c:00:99".into();
        let error = hypervisor
            .ensure_domain(&spec, &other, false)
            .expect_err("another MAC");
        assert!(error.to_string().contains("--replace"), "{error}");
        let replaced = hypervisor
            .ensure_domain(&spec, &other, true)
            .expect("replace");
        assert_eq!(replaced, "replaced the domain");

        let mut broken = node.clone();
        broken.name = "bad".into();
        broken.mac = "not a mac".into();
        let error = hypervisor
            .ensure_domain(&spec, &broken, false)
            .expect_err("invalid XML");
        assert!(
            format!("{error:#}").contains("refused the domain XML"),
            "{error:#}"
        );
    }

    /// An Image Factory ISO becomes a network CD-ROM the test driver
    /// validates and defines.
    #[test]
    fn an_image_factory_iso_is_a_network_cdrom() {
        let spec: ClusterSpec = toml::from_str(&format!(
            r#"
            [libvirt]
            uri = "test:///default"
            [libvirt.image_factory]
            schematic = "{}"
            version = "v1.9.5"
            [[node]]
            name = "talos-w1"
            role = "worker"
            mac = "52:54:00:6c:00:02"
            maintenance_address = "127.0.0.1"
            endpoint = "127.0.0.1"
            "#,
            "ce4c".repeat(16)
        ))
        .expect("spec");
        let hypervisor = Hypervisor::connect("test:///default").expect("test driver");
        hypervisor
            .ensure_disk(&spec, &spec.nodes[0], false)
            .expect("disk");
        hypervisor
            .ensure_domain(&spec, &spec.nodes[0], false)
            .expect("define");
        let xml = hypervisor
            .connection
            .lookup_domain_by_name("talos-w1")
            .and_then(|d| d.xml_desc(0))
            .expect("defined");
        let path = format!("/image/{}/v1.9.5/metal-amd64.iso", "ce4c".repeat(16));
        for part in [
            "type='network' device='cdrom'",
            "protocol='https'",
            path.as_str(),
            "host name='factory.talos.dev' port='443'",
        ] {
            assert!(xml.contains(part), "the domain lacks {part}:\n{xml}");
        }
    }
}
