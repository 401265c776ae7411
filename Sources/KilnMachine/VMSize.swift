import KilnSupport
import KilnTemplate

/// Azure VM sizes Kiln knows, mapped to the vCPUs and memory of the local VM.
/// The numbers are Azure's published ones; under TCG, vCPUs are capped at the host's cores.
public struct VMSize: Sendable, Equatable {
    public var name: String
    public var vCPUs: Int
    public var memoryMiB: Int

    /// The sizes in KilnTemplate's AzureVMSize table (its sources are named there).
    public static let table: [VMSize] = AzureVMSize.table.map { VMSize(name: $0.name, vCPUs: $0.vCPUs, memoryMiB: $0.memoryMiB) }

    public init(name: String, vCPUs: Int, memoryMiB: Int) {
        self.name = name
        self.vCPUs = vCPUs
        self.memoryMiB = memoryMiB
    }

    /// Looks a size up without regard to case, as Azure does.
    public static func named(_ name: String) throws(KilnError) -> VMSize {
        if let size = table.first(where: { $0.name.lowercased() == name.lowercased() }) { return size }
        throw KilnError(.invalidArgument, "expected an Azure VM size Kiln knows, found \(AzureVMSize.unknownSizeDescription(name))")
    }
}
