import KilnSupport

/// Azure VM sizes Kiln knows, mapped to the vCPUs and memory of the local VM.
/// The numbers are Azure's published ones; under TCG, vCPUs are capped at the host's cores.
public struct VMSize: Sendable, Equatable {
    public var name: String
    public var vCPUs: Int
    public var memoryMiB: Int

    /// Common general-purpose, compute, memory and burstable sizes (the ones AIB users pick for build VMs).
    public static let table: [VMSize] = [
        // Dv2 (AIB's Gen1 default is Standard_D1_v2)
        .init(name: "Standard_D1_v2", vCPUs: 1, memoryMiB: 3584), .init(name: "Standard_D2_v2", vCPUs: 2, memoryMiB: 7168),
        .init(name: "Standard_D3_v2", vCPUs: 4, memoryMiB: 14336), .init(name: "Standard_D4_v2", vCPUs: 8, memoryMiB: 28672),
        .init(name: "Standard_DS1_v2", vCPUs: 1, memoryMiB: 3584), .init(name: "Standard_DS2_v2", vCPUs: 2, memoryMiB: 7168),
        .init(name: "Standard_DS3_v2", vCPUs: 4, memoryMiB: 14336), .init(name: "Standard_DS4_v2", vCPUs: 8, memoryMiB: 28672),
        // Av2
        .init(name: "Standard_A1_v2", vCPUs: 1, memoryMiB: 2048), .init(name: "Standard_A2_v2", vCPUs: 2, memoryMiB: 4096),
        .init(name: "Standard_A4_v2", vCPUs: 4, memoryMiB: 8192), .init(name: "Standard_A8_v2", vCPUs: 8, memoryMiB: 16384),
        // B (burstable)
        .init(name: "Standard_B1s", vCPUs: 1, memoryMiB: 1024), .init(name: "Standard_B1ms", vCPUs: 1, memoryMiB: 2048),
        .init(name: "Standard_B2s", vCPUs: 2, memoryMiB: 4096), .init(name: "Standard_B2ms", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_B4ms", vCPUs: 4, memoryMiB: 16384),
        // Dv3 / Dsv3
        .init(name: "Standard_D2_v3", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4_v3", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8_v3", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D2s_v3", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4s_v3", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8s_v3", vCPUs: 8, memoryMiB: 32768),
        // Dv4 / Dsv4 / Ddsv4 (AIB's Gen2 default is Standard_D2ds_v4)
        .init(name: "Standard_D2_v4", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4_v4", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D2s_v4", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4s_v4", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D2ds_v4", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4ds_v4", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8ds_v4", vCPUs: 8, memoryMiB: 32768),
        // Dv5 / Dsv5 / Ddsv5 / Dasv5
        .init(name: "Standard_D2_v5", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D2s_v5", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4s_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8s_v5", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D2ds_v5", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4ds_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D2as_v5", vCPUs: 2, memoryMiB: 8192), .init(name: "Standard_D4as_v5", vCPUs: 4, memoryMiB: 16384),
        // F (compute optimised)
        .init(name: "Standard_F2s_v2", vCPUs: 2, memoryMiB: 4096), .init(name: "Standard_F4s_v2", vCPUs: 4, memoryMiB: 8192),
        .init(name: "Standard_F8s_v2", vCPUs: 8, memoryMiB: 16384),
        // E (memory optimised)
        .init(name: "Standard_E2s_v3", vCPUs: 2, memoryMiB: 16384), .init(name: "Standard_E4s_v3", vCPUs: 4, memoryMiB: 32768),
        .init(name: "Standard_E2s_v5", vCPUs: 2, memoryMiB: 16384), .init(name: "Standard_E4s_v5", vCPUs: 4, memoryMiB: 32768),
    ]

    /// Looks a size up without regard to case, as Azure does.
    public static func named(_ name: String) throws(KilnError) -> VMSize {
        if let size = table.first(where: { $0.name.lowercased() == name.lowercased() }) { return size }
        throw KilnError(.invalidArgument, "expected a VM size Kiln knows (\(table.map(\.name).joined(separator: ", "))), found \"\(name)\"")
    }
}
