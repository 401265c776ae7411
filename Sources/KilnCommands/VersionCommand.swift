import ArgumentParser
import KilnDigest
import KilnGuestfs
import KilnLibvirt

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print Kiln's version and the versions of the C libraries it runs on."
    )

    func run() throws {
        print("kiln \(KilnVersion.current)")
        print("libvirt \(try Libvirt.libraryVersion())")
        let guestfs = try GuestfsHandle()
        print("libguestfs \(try guestfs.libraryVersion())")
        guestfs.close()
        print(SHA256Digest.libraryVersion)
    }
}
