import Foundation
import KilnMachine
import KilnStore
import KilnSupport

extension SourceImage {
    /// A stored managed image or gallery version as a build source. Its disk must still be there.
    init(stored disk: StoredDisk, reference: String, version: String?, path: String) throws(KilnError) {
        guard FileManager.default.fileExists(atPath: disk.path) else {
            throw KilnError(.notFound, "\(path): the local store records \(reference), but its disk \(disk.path) is missing")
        }
        self.init(path: disk.path, format: disk.format, virtualSizeBytes: disk.virtualSizeBytes,
                  firmware: Firmware(rawValue: disk.firmware) ?? .bios, osType: disk.osType, hasCloudInit: disk.hasCloudInit,
                  urn: nil, version: version, reference: reference)
    }
}
