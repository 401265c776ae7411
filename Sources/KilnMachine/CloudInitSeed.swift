import Foundation
import KilnSupport

/// The build user and key, given to the guest at first boot.
public struct BuildCredentials: Sendable {
    public var username: String
    public var authorizedKey: String

    public init(username: String, authorizedKey: String) {
        self.username = username
        self.authorizedKey = authorizedKey
    }
}

/// A cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata` holding `meta-data` and `user-data`.
public enum CloudInitSeed {
    /// The build user is the only account the seed creates. No `default` entry: that would also create the
    /// distribution's default user (`debian`, in the sudo group), which nothing removes, so it would ship in the
    /// image; on Azure the template's admin user takes the default user's place, so AIB's images have no such account.
    public static func userData(_ credentials: BuildCredentials) -> String {
        """
        #cloud-config
        users:
          - name: \(credentials.username)
            gecos: Kiln build user
            shell: /bin/bash
            sudo: "ALL=(ALL) NOPASSWD:ALL"
            lock_passwd: true
            ssh_authorized_keys:
              - \(credentials.authorizedKey)
        ssh_pwauth: false

        """
    }

    public static func metaData(instanceID: String, hostname: String) -> String {
        "instance-id: \(instanceID)\nlocal-hostname: \(hostname)\n"
    }

    /// Writes the seed ISO to `path`.
    public static func write(to path: String, credentials: BuildCredentials, instanceID: String, hostname: String) async throws(KilnError) {
        try await ISOImage.write(to: path, volumeID: "cidata",
                                 files: ["user-data": userData(credentials), "meta-data": metaData(instanceID: instanceID, hostname: hostname)])
    }
}

/// A small ISO 9660 volume (with Joliet and Rock Ridge names) holding a few text files: the provisioning media
/// the guest's agent reads.
public enum ISOImage {
    public static func write(to path: String, volumeID: String, files: [String: String]) async throws(KilnError) {
        let directory = path + ".d"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (name, text) in files {
                try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw KilnError(.io, "cannot write the provisioning files in \(directory): \(error.localizedDescription)")
        }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await Subprocess.check("xorriso", ["-as", "mkisofs", "-quiet", "-volid", volumeID, "-joliet", "-rock", "-output", path, directory],
                                   timeout: .seconds(60))
    }
}
