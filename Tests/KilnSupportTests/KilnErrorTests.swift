import Testing
@testable import KilnSupport

@Suite("KilnError codes")
struct KilnErrorTests {
    @Test func aCodeIsFoundThroughTheChainOfCauses() {
        let libvirt = KilnError(.alreadyExists, "libvirt domain restore from /x failed: domain 'kiln-1' already exists")
        let resume = KilnError(.external, "cannot resume the checkpoint", cause: libvirt)
        #expect(resume.hasCode(.alreadyExists))
        #expect(resume.hasCode(.external))
        #expect(!resume.hasCode(.portUnavailable))
        #expect(resume.description == "cannot resume the checkpoint: libvirt domain restore from /x failed: domain 'kiln-1' already exists")
    }
}
