import Foundation
import KilnSupport

/// A qcow2 layer over an imported image that the Azure Linux agent provisions, holding the DHCP leases that tell
/// the agent where the wireserver is (`DHCPLease`). Made once, at import, in the libguestfs launch the import
/// already spends on inspection; every build's overlay is then created on the layer instead of on the source, so a
/// build of such an image needs no libguestfs launch before its boot (one was ~25–45 s under TCG). The source stays
/// the layer's read-only backing file and is never written; the leases leave the image in the final cleanup as
/// before, since the build's own overlay sits on top of them.
public struct LeaseLayer: Sendable, Codable, Equatable {
    /// The layer file (qcow2, backing file: the source, format stated).
    public var path: String
    /// The lease files written into it, as guest paths.
    public var leases: [String]

    public init(path: String, leases: [String]) {
        self.path = path
        self.leases = leases
    }

    /// A layer is used only while it is newer than its source: a source file changed after the import (same path,
    /// new content) would show through the layer as a different disk.
    public func isUsable(over source: SourceImage) -> Bool {
        let manager = FileManager.default
        guard let layerDate = (try? manager.attributesOfItem(atPath: path))?[.modificationDate] as? Date,
              let sourceDate = (try? manager.attributesOfItem(atPath: source.path))?[.modificationDate] as? Date else { return false }
        return layerDate >= sourceDate
    }

    /// Inspects `source` through a new layer at `path` (one libguestfs launch) and, when the Azure Linux agent
    /// provisions the image, writes the leases into the layer and keeps it; otherwise no layer is left. A layer
    /// already at `path` (an earlier import of the same URN) is replaced.
    public static func inspect(source: String, format: String, path: String,
                               accelerator: Accelerator) async throws(KilnError) -> (OfflineInspection, LeaseLayer?) {
        let partial = path + ".partial-\(getpid())"
        try? FileManager.default.removeItem(atPath: partial)
        try await Subprocess.check("qemu-img", ["create", "-q", "-f", "qcow2", "-F", format, "-b", source, partial], timeout: .seconds(120))
        do throws(KilnError) {
            let inspection = try await OfflineProvisioner.inspectAndProvision(disk: partial, format: "qcow2", accelerator: accelerator,
                                                                              credentials: nil, forceOffline: false, writingAgentLeases: true)
            guard !inspection.writtenLeases.isEmpty else {
                try? FileManager.default.removeItem(atPath: partial)
                return (inspection, nil)
            }
            guard rename(partial, path) == 0 else {
                let reason = String(cString: strerror(errno))
                throw KilnError(.io, "cannot move the lease layer into place at \(path): \(reason)")
            }
            return (inspection, LeaseLayer(path: path, leases: inspection.writtenLeases))
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw error
        }
    }
}
