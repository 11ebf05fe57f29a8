//! The libvirt XML of a Talos VM and its disk: q35 with UEFI firmware
//! (OVMF, `firmware='efi'`), CPU `host-passthrough` (Talos needs
//! x86-64-v2), a virtio disk and NIC on the bridge, the Talos ISO as a SATA
//! CD-ROM (a file, or the Image Factory's ISO over HTTPS), booting from the
//! disk first and the CD-ROM while the disk is empty.

use std::path::PathBuf;

use lifeboat::text::xml::escape;

use crate::spec::{ClusterSpec, NodeSpec};

/// The file name of a VM's disk, as Unraid names it.
pub const DISK_FILE: &str = "vdisk1.img";

/// The folder of a node's disk.
pub fn disk_dir(spec: &ClusterSpec, node: &NodeSpec) -> PathBuf {
    spec.libvirt.disk_dir.join(&node.name)
}

/// The name of the storage pool lifeboat uses to create a node's disk.
pub fn pool_name(node: &NodeSpec) -> String {
    format!("lifeboat-{}", node.name)
}

/// A directory storage pool over the node's disk folder.
pub fn pool_xml(spec: &ClusterSpec, node: &NodeSpec) -> String {
    format!(
        "<pool type='dir'>\n  <name>{}</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
        escape(&pool_name(node)),
        escape(&disk_dir(spec, node).to_string_lossy()),
    )
}

/// The node's disk, a raw file of its size.
pub fn volume_xml(node: &NodeSpec) -> String {
    format!(
        "<volume>\n  <name>{DISK_FILE}</name>\n  <capacity unit='GiB'>{}</capacity>\n  <target>\n    <format type='raw'/>\n  </target>\n</volume>\n",
        node.disk_gib()
    )
}

/// The CD-ROM holding the Talos ISO: a file on the hypervisor, or the
/// Image Factory's ISO read over HTTP(S) by QEMU.
fn cdrom_xml(spec: &ClusterSpec) -> String {
    let tail = "      <target dev='sda' bus='sata'/>\n      <readonly/>\n    </disk>\n";
    let factory = spec
        .libvirt
        .image_factory
        .as_ref()
        .and_then(|f| f.iso_location().ok());
    match (factory, &spec.libvirt.iso) {
        (Some(at), _) => format!(
            "    <disk type='network' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      \
             <source protocol='{}' name='{}'>\n        <host name='{}' port='{}'/>\n      </source>\n{tail}",
            escape(&at.scheme),
            escape(&at.path),
            escape(&at.host),
            at.port,
        ),
        (None, iso) => format!(
            "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n{tail}",
            escape(
                &iso.as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .to_string_lossy()
            ),
        ),
    }
}

/// The domain of the node.
pub fn domain_xml(spec: &ClusterSpec, node: &NodeSpec) -> String {
    let disk = disk_dir(spec, node).join(DISK_FILE);
    format!(
        "<domain type='kvm'>
  <name>{name}</name>
  <description>Talos {role:?} node, created by lifeboat rebuild</description>
  <memory unit='MiB'>{memory}</memory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
    <boot dev='cdrom'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>restart</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='writeback' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
{cdrom}    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{bridge}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
    <console type='pty'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
</domain>
",
        name = escape(&node.name),
        role = node.role,
        memory = node.memory_mib(),
        vcpus = node.vcpus(),
        disk = escape(&disk.to_string_lossy()),
        cdrom = cdrom_xml(spec),
        mac = escape(&node.mac),
        bridge = escape(&node.bridge),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    #[test]
    fn a_nodes_domain_has_its_role_sizes_mac_bridge_and_disk() {
        let mut spec = spec("");
        spec.nodes[0].bridge = "br1".into();
        spec.nodes[1].memory_mib = Some(6144);
        let worker = domain_xml(&spec, &spec.nodes[0]);
        for part in [
            "<name>w1</name>",
            "Talos Worker node",
            "<memory unit='MiB'>8192</memory>",
            "<vcpu placement='static'>4</vcpu>",
            "<mac address='52:54:00:00:00:02'/>",
            "<source bridge='br1'/>",
            "<source file='/mnt/user/domains/w1/vdisk1.img'/>",
            "<source file='/mnt/user/isos/metal-amd64.iso'/>",
            "<os firmware='efi'>",
            "<cpu mode='host-passthrough'",
        ] {
            assert!(worker.contains(part), "lacks {part}:\n{worker}");
        }
        // The disk boots first, the CD-ROM while the disk is empty.
        let hd = worker.find("<boot dev='hd'/>").expect("hd");
        let cdrom = worker.find("<boot dev='cdrom'/>").expect("cdrom");
        assert!(hd < cdrom);
        let cp = domain_xml(&spec, &spec.nodes[1]);
        for part in [
            "Talos Controlplane node",
            "<memory unit='MiB'>6144</memory>",
            "<vcpu placement='static'>2</vcpu>",
            "<source bridge='br0'/>",
        ] {
            assert!(cp.contains(part), "lacks {part}:\n{cp}");
        }
        assert!(volume_xml(&spec.nodes[1]).contains("<capacity unit='GiB'>32</capacity>"));
        assert!(volume_xml(&spec.nodes[0]).contains("<capacity unit='GiB'>64</capacity>"));
    }

    #[test]
    fn text_from_the_spec_is_escaped() {
        let mut spec = spec("");
        spec.libvirt.disk_dir = PathBuf::from("/mnt/a&b");
        spec.nodes[0].bridge = "br'0\"<x>".into();
        let xml = domain_xml(&spec, &spec.nodes[0]);
        assert!(xml.contains("/mnt/a&amp;b/w1/vdisk1.img"), "{xml}");
        assert!(
            xml.contains("<source bridge='br&apos;0&quot;&lt;x&gt;'/>"),
            "{xml}"
        );
        assert!(pool_xml(&spec, &spec.nodes[0]).contains("<path>/mnt/a&amp;b/w1</path>"));
        assert_eq!(pool_name(&spec.nodes[0]), "lifeboat-w1");
    }
}
