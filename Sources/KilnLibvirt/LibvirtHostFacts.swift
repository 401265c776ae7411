import CLibvirt
import Foundation
import KilnSupport

/// What a libvirt host says of itself, for `kiln doctor` and for choosing a host: all read through the
/// connection, so for `qemu+ssh://` they are the remote host's.
public struct LibvirtHostFacts: Sendable, Equatable {
    public var hostname: String
    /// The daemon's libvirt version (virConnectGetLibVersion), e.g. "9.0.0".
    public var libvirtVersion: String
    /// The driver's hypervisor (virConnectGetType), "QEMU" for the QEMU driver.
    public var hypervisor: String
    /// The hypervisor's version (virConnectGetVersion), e.g. "7.2.22" for QEMU. Reading it makes the daemon probe
    /// its QEMU binary if it has no cached capabilities yet (seconds under TCG).
    public var hypervisorVersion: String
    /// Memory the host's kernel reports free (virNodeGetFreeMemory), in bytes.
    public var freeMemoryBytes: UInt64
}

extension LibvirtConnection {
    public func hostFacts() async throws(KilnError) -> LibvirtHostFacts {
        try await call("host facts") { connection -> LibvirtHostFacts? in
            guard let hostname = virConnectGetHostname(connection.pointer) else { return nil }
            defer { free(hostname) }
            var libraryVersion: UInt = 0
            var hypervisorVersion: UInt = 0
            guard virConnectGetLibVersion(connection.pointer, &libraryVersion) == 0,
                  let type = virConnectGetType(connection.pointer),
                  virConnectGetVersion(connection.pointer, &hypervisorVersion) == 0 else { return nil }
            // 0 is also the error value; a host with no free byte at all is not one to build on either.
            virResetLastError()
            let freeMemory = virNodeGetFreeMemory(connection.pointer)
            if freeMemory == 0, virGetLastError() != nil { return nil }
            return LibvirtHostFacts(hostname: String(cString: hostname), libvirtVersion: Libvirt.versionText(libraryVersion),
                                    hypervisor: String(cString: type), hypervisorVersion: Libvirt.versionText(hypervisorVersion),
                                    freeMemoryBytes: freeMemory)
        }
    }
}

extension LibvirtConnection {
    /// Whether the host's QEMU driver offers KVM domains for x86_64 (virConnectGetDomainCapabilities with virt type
    /// kvm succeeds only where /dev/kvm is usable by it). The remote host's answer for `qemu+ssh://`.
    public func offersKVM() async -> Bool {
        (try? await call("domain capabilities (kvm)") { connection -> Bool? in
            guard let xml = virConnectGetDomainCapabilities(connection.pointer, nil, "x86_64", nil, "kvm", 0) else {
                virResetLastError()
                return false
            }
            free(xml)
            return true
        }) ?? false
    }
}
