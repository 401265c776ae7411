import Foundation
@testable import KilnMachine
import KilnSupport
import Testing

@Suite("Source images")
struct SourceImageTests {
    @Test("a file that is not a disk image is a clear error")
    func notADisk() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-notdisk-\(UUID().uuidString).txt").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "just some text, not a disk\n".write(toFile: path, atomically: true, encoding: .utf8)
        do {
            _ = try await DiskImageProbe.inspect(path)
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("expected a bootable disk image"), "\(error)")
            #expect(error.message.contains(path))
        }
    }

    @Test("a missing file is a clear error")
    func missing() async throws {
        do {
            _ = try await DiskImageProbe.inspect("/nonexistent/disk.qcow2")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message.contains("/nonexistent/disk.qcow2"))
        }
    }

    @Test("MBR means BIOS; GPT with an EFI System Partition means UEFI; a fixed VHD is read as vpc")
    func formatsAndFirmware() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-disks-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mbr = directory + "/mbr.raw"
        try await Subprocess.check("qemu-img", ["create", "-q", "-f", "raw", mbr, "64M"])
        try await Subprocess.check("sfdisk", ["-q", mbr], timeout: .seconds(30), stdinText: "label: dos\n,,L\n")
        #expect(try await DiskImageProbe.inspect(mbr).firmware == .bios)

        let gpt = directory + "/gpt.raw"
        try await Subprocess.check("qemu-img", ["create", "-q", "-f", "raw", gpt, "64M"])
        try await Subprocess.check("sfdisk", ["-q", gpt], timeout: .seconds(30), stdinText: "label: gpt\n,32M,U\n,,L\n")
        #expect(try await DiskImageProbe.inspect(gpt).firmware == .uefi)

        let qcow = directory + "/gpt.qcow2"
        try await Subprocess.check("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", gpt, qcow])
        let qcowInfo = try await DiskImageProbe.inspect(qcow)
        #expect(qcowInfo.format == "qcow2")
        #expect(qcowInfo.firmware == .uefi)
        #expect(qcowInfo.virtualSizeBytes == 64 << 20)

        let vhd = directory + "/mbr.vhd"
        try await Subprocess.check("qemu-img", ["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", mbr, vhd])
        let vhdInfo = try await DiskImageProbe.inspect(vhd)
        #expect(vhdInfo.format == "vpc")
        #expect(vhdInfo.virtualSizeBytes == 64 << 20)
        #expect(vhdInfo.firmware == .bios)
    }

    @Test("VM sizes come from the table; unknown sizes are a clear error")
    func sizes() throws {
        #expect(try VMSize.named("Standard_D1_v2") == VMSize(name: "Standard_D1_v2", vCPUs: 1, memoryMiB: 3584))
        #expect(try VMSize.named("standard_d2s_v3").vCPUs == 2)
        #expect(throws: KilnError.self) { try VMSize.named("Standard_Imaginary_v9") }
    }

    @Test("the domain XML forwards SSH from 127.0.0.1 only and never writes the source")
    func domainXML() {
        let spec = DomainSpec(name: "kiln-test", accelerator: .tcg, vCPUs: 2, memoryMiB: 2048, firmware: .uefi, nvramPath: "/run/x/nvram.fd",
                              disks: [.init(path: "/run/x/disk.qcow2", format: "qcow2", readOnly: false, device: .virtioDisk(target: "vda")),
                                      .init(path: "/run/x/seed.iso", format: "raw", readOnly: true, device: .virtioDisk(target: "vdb"))],
                              serialLogPath: "/run/x/console.log", portForwards: [.init(hostPort: 2222, guestPort: 22)])
        let xml = spec.xml
        #expect(xml.contains("<domain type='qemu'"))
        #expect(xml.contains("hostfwd=tcp:127.0.0.1:2222-:22"))
        #expect(!xml.contains("hostfwd=tcp::"))
        #expect(xml.contains("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"))
        #expect(xml.contains("<source file='/run/x/disk.qcow2'/>"))
        #expect(xml.contains("<readonly/>"))
        #expect(xml.contains("<source path='/run/x/console.log'/>"))
    }

    @Test("the accelerator decision is cached per host boot and honours explicit choices")
    func acceleratorCache() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-accel-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(await AcceleratorProbe.decide(.tcg, cacheDirectory: directory).accelerator == .tcg)
        #expect(await AcceleratorProbe.decide(.kvm, cacheDirectory: directory).accelerator == .kvm)
        let first = await AcceleratorProbe.decide(.auto, cacheDirectory: directory)
        #expect(!first.evidence.isEmpty)
        let second = await AcceleratorProbe.decide(.auto, cacheDirectory: directory)
        #expect(second == first)
    }
}
