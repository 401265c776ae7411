import Foundation
import KilnLibvirt
import Testing
@testable import KilnMachine

/// What Kiln asks of a system libvirtd (`--connect qemu:///system`), without a VM.
@Suite("System libvirtd: the domain and the URI")
struct SystemDaemonDomainTests {
    @Test("a local system daemon is told to run QEMU as Kiln's user and to relabel nothing; other URIs are told nothing")
    func seclabel() {
        var spec = DomainSpec(name: "kiln-1", accelerator: .tcg, vCPUs: 1, memoryMiB: 512, firmware: .bios, nvramPath: nil, disks: [],
                              serialLogPath: "/r/console.log", portForwards: [])
        #expect(!spec.xml.contains("<seclabel"))
        spec.processOwner = DomainSpec.ProcessOwner(uid: 1000, gid: 1001)
        #expect(spec.xml.contains("  <seclabel type='static' model='dac' relabel='no'><label>+1000:+1001</label></seclabel>\n"))
        #expect(DomainSpec.ProcessOwner.current == DomainSpec.ProcessOwner(uid: getuid(), gid: getgid()))
    }

    @Test("which URIs name a daemon on this machine, and which its system instance", arguments: [
        ("qemu:///system", nil, true), ("qemu+unix:///system", nil, true), ("qemu:///session", nil, false),
        ("qemu:///embed?root=/tmp/x", nil, false), ("qemu+ssh://root@lab1/system", "lab1", false),
        ("qemu+tls://10.0.0.5/system", "10.0.0.5", false),
    ] as [(String, String?, Bool)])
    func uris(uri: String, host: String?, localSystem: Bool) {
        #expect(LibvirtURI.remoteHost(uri) == host)
        #expect(LibvirtURI.isLocalSystem(uri) == localSystem)
    }
}
