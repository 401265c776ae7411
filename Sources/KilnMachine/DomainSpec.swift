import Foundation
import KilnSupport

/// A typed description of the build VM, rendered to libvirt domain XML.
public struct DomainSpec: Sendable, Equatable {
    public struct Disk: Sendable, Equatable {
        public var path: String
        public var format: String
        public var readOnly: Bool
        /// virtio for the OS disk; the NoCloud seed goes on a CD-ROM.
        public var device: Device

        public enum Device: Sendable, Equatable {
            case virtioDisk(target: String)
            case sataDisk(target: String)
            case cdrom(target: String)
        }
    }

    public struct PortForward: Sendable, Equatable {
        public var hostPort: Int
        public var guestPort: Int
        public init(hostPort: Int, guestPort: Int) {
            self.hostPort = hostPort
            self.guestPort = guestPort
        }
    }

    public var name: String
    /// nil: libvirt picks one. A domain resumed from a memory image keeps the UUID it was saved with.
    public var uuid: String? = nil
    public var accelerator: Accelerator
    public var vCPUs: Int
    public var memoryMiB: Int
    public var firmware: Firmware
    /// UEFI only: a per-VM copy of the OVMF variable store.
    public var nvramPath: String?
    public var disks: [Disk]
    public var serialLogPath: String
    /// Forwards from 127.0.0.1 on the host to the guest, over QEMU user-mode networking.
    public var portForwards: [PortForward]
    /// The SMBIOS chassis asset tag the guest reads (`/sys/class/dmi/id/chassis_asset_tag`); Azure's tells
    /// cloud-init's ds-identify that it runs on Azure.
    public var chassisAssetTag: String? = nil
    /// Extra options for QEMU's user-mode network (`net=…`, `guestfwd=…`), commas inside values already doubled.
    public var userNetworkOptions: [String] = []
    /// A Windows guest: inbox drivers only (SATA disk, e1000e NIC), the RTC in UTC as Azure keeps it, Hyper-V
    /// enlightenments under KVM.
    public var windowsHardware = false
    /// A system libvirtd's QEMU runs as this user and group (`uid`, `gid`) instead of its own (Debian's
    /// libvirt-qemu), and libvirt relabels nothing: QEMU opens the run's private files with the rights of the user
    /// who runs Kiln, as the embedded driver's QEMU does, and the source's owner is never changed.
    public var processOwner: ProcessOwner? = nil

    public struct ProcessOwner: Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public init(uid: UInt32, gid: UInt32) {
            self.uid = uid
            self.gid = gid
        }

        /// The user and group running Kiln.
        public static var current: ProcessOwner { ProcessOwner(uid: getuid(), gid: getgid()) }
    }

    public static let ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    public static let ovmfVarsTemplate = "/usr/share/OVMF/OVMF_VARS_4M.fd"

    public var xml: String {
        var lines: [String] = []
        let type = accelerator == .kvm ? "kvm" : "qemu"
        lines.append("<domain type='\(type)' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>")
        lines.append("  <name>\(XMLText.escape(name))</name>")
        if let uuid { lines.append("  <uuid>\(XMLText.escape(uuid))</uuid>") }
        lines.append("  <memory unit='MiB'>\(memoryMiB)</memory>")
        lines.append("  <vcpu>\(vCPUs)</vcpu>")
        lines.append("  <os>")
        lines.append("    <type arch='x86_64' machine='pc'>hvm</type>")
        if firmware == .uefi {
            lines.append("    <loader readonly='yes' type='pflash'>\(DomainSpec.ovmfCode)</loader>")
            if let nvramPath {
                lines.append("    <nvram template='\(DomainSpec.ovmfVarsTemplate)'>\(XMLText.escape(nvramPath))</nvram>")
            }
        }
        lines.append("    <boot dev='hd'/>")
        if chassisAssetTag != nil { lines.append("    <smbios mode='sysinfo'/>") }
        lines.append("  </os>")
        if let chassisAssetTag {
            lines.append("  <sysinfo type='smbios'><chassis><entry name='asset'>\(XMLText.escape(chassisAssetTag))</entry></chassis></sysinfo>")
        }
        if windowsHardware && accelerator == .kvm {
            lines.append("  <features><acpi/><apic/><hyperv><relaxed state='on'/><vapic state='on'/><spinlocks state='on' retries='8191'/></hyperv></features>")
        } else {
            lines.append("  <features><acpi/><apic/></features>")
        }
        // TCG: the most capable emulated CPU; KVM: the host's.
        lines.append(accelerator == .kvm ? "  <cpu mode='host-passthrough'/>" : "  <cpu mode='maximum'/>")
        lines.append("  <clock offset='utc'/>")
        lines.append("  <on_poweroff>destroy</on_poweroff>")
        lines.append("  <on_reboot>restart</on_reboot>")
        lines.append("  <on_crash>destroy</on_crash>")
        lines.append("  <devices>")
        for disk in disks {
            switch disk.device {
            case .virtioDisk(let target), .sataDisk(let target):
                // cache=unsafe: a build VM's disk is disposable until shutdown, and fsync-heavy package installs
                // run much faster; discard=unmap lets fstrim in the guest keep the overlay sparse.
                let bus: String
                if case .sataDisk = disk.device { bus = "sata" } else { bus = "virtio" }
                lines.append("    <disk type='file' device='disk'>")
                lines.append(disk.readOnly ? "      <driver name='qemu' type='\(disk.format)'/>"
                                           : "      <driver name='qemu' type='\(disk.format)' cache='unsafe' discard='unmap'/>")
                lines.append("      <source file='\(XMLText.escape(disk.path))'/>")
                lines.append("      <target dev='\(target)' bus='\(bus)'/>")
            case .cdrom(let target):
                lines.append("    <disk type='file' device='cdrom'>")
                lines.append("      <driver name='qemu' type='\(disk.format)'/>")
                lines.append("      <source file='\(XMLText.escape(disk.path))'/>")
                lines.append("      <target dev='\(target)' bus='ide'/>")
            }
            if disk.readOnly { lines.append("      <readonly/>") }
            lines.append("    </disk>")
        }
        lines.append("    <serial type='file'>")
        lines.append("      <source path='\(XMLText.escape(serialLogPath))'/>")
        lines.append("      <target port='0'/>")
        lines.append("    </serial>")
        lines.append("    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>")
        lines.append("    <memballoon model='none'/>")
        lines.append("  </devices>")
        if let owner = processOwner {
            lines.append("  <seclabel type='static' model='dac' relabel='no'><label>+\(owner.uid):+\(owner.gid)</label></seclabel>")
        }
        // libvirt 9.0 has no port forwarding for user-mode networking (passt is rejected), so the NIC is given to
        // QEMU directly. The explicit PCI address keeps it from colliding with libvirt's own devices.
        let options = ["user", "id=kilnnet0"] + userNetworkOptions
            + portForwards.map { "hostfwd=tcp:127.0.0.1:\($0.hostPort)-:\($0.guestPort)" }
        lines.append("  <qemu:commandline>")
        lines.append("    <qemu:arg value='-netdev'/>")
        lines.append("    <qemu:arg value='\(XMLText.escape(options.joined(separator: ",")))'/>")
        lines.append("    <qemu:arg value='-device'/>")
        lines.append("    <qemu:arg value='\(windowsHardware ? "e1000e" : "virtio-net-pci"),netdev=kilnnet0,bus=pci.0,addr=0x1f'/>")
        lines.append("  </qemu:commandline>")
        lines.append("</domain>")
        return lines.joined(separator: "\n") + "\n"
    }
}
