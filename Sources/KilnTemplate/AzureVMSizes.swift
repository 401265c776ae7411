/// Azure VM sizes with their vCPUs and memory: what `vmProfile.vmSize` may name and what a local build VM gets.
///
/// Sources, per family:
/// - the hand-picked list Kiln started with (Av2, B, Dv2/DSv2, Fsv2, Esv3/Esv5 and AIB's defaults Standard_D1_v2 and
///   Standard_D2ds_v4), Azure's published size tables (https://learn.microsoft.com/azure/virtual-machines/sizes);
/// - the D-series v3, v4 and v5 families as published in Microsoft's Aspire reference for AKS node sizes (generated
///   from Azure's resource SKUs), one page per family, named on each group below. GB there is GiB here.
/// Not every Azure size is here (GPU, HPC, confidential and constrained-core sizes are not): validate warns about a
/// size it does not know, and `kiln build` refuses one, since it cannot size the VM.
public struct AzureVMSize: Sendable, Equatable {
    public var name: String
    public var vCPUs: Int
    public var memoryMiB: Int

    public init(name: String, vCPUs: Int, memoryMiB: Int) {
        self.name = name
        self.vCPUs = vCPUs
        self.memoryMiB = memoryMiB
    }

    public static let table: [AzureVMSize] = {
        var seen: Set<String> = []
        return (handPicked + dFamilies).filter { seen.insert($0.name.lowercased()).inserted }
    }()

    /// Looks a size up without regard to case, as Azure does.
    public static func named(_ name: String) -> AzureVMSize? {
        table.first { $0.name.caseInsensitiveEquals(name) }
    }

    private static let handPicked: [AzureVMSize] = [
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

    private static let dFamilies: [AzureVMSize] = [
        // Dv3 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddv3/fields/
        .init(name: "Standard_D2_v3", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4_v3", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8_v3", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16_v3", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32_v3", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48_v3", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64_v3", vCPUs: 64, memoryMiB: 262144),
        // Dsv3 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddsv3/fields/
        .init(name: "Standard_D2s_v3", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4s_v3", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8s_v3", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16s_v3", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32s_v3", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48s_v3", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64s_v3", vCPUs: 64, memoryMiB: 262144),
        // Dsv4 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddsv4/fields/
        .init(name: "Standard_D2s_v4", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4s_v4", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8s_v4", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16s_v4", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32s_v4", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48s_v4", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64s_v4", vCPUs: 64, memoryMiB: 262144),
        // Ddv4 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standardddv4/fields/
        .init(name: "Standard_D2d_v4", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4d_v4", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8d_v4", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16d_v4", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32d_v4", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48d_v4", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64d_v4", vCPUs: 64, memoryMiB: 262144),
        // Ddsv4 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standardddsv4/fields/
        .init(name: "Standard_D2ds_v4", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4ds_v4", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8ds_v4", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16ds_v4", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32ds_v4", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48ds_v4", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64ds_v4", vCPUs: 64, memoryMiB: 262144),
        // Dv5 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddv5/fields/
        .init(name: "Standard_D2_v5", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8_v5", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16_v5", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32_v5", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48_v5", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64_v5", vCPUs: 64, memoryMiB: 262144),
        .init(name: "Standard_D96_v5", vCPUs: 96, memoryMiB: 393216),
        // Dsv5 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddsv5/fields/
        .init(name: "Standard_D2s_v5", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4s_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8s_v5", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16s_v5", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32s_v5", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48s_v5", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64s_v5", vCPUs: 64, memoryMiB: 262144),
        .init(name: "Standard_D96s_v5", vCPUs: 96, memoryMiB: 393216),
        // Ddv5 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standardddv5/fields/
        .init(name: "Standard_D2d_v5", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4d_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8d_v5", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16d_v5", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32d_v5", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48d_v5", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64d_v5", vCPUs: 64, memoryMiB: 262144),
        .init(name: "Standard_D96d_v5", vCPUs: 96, memoryMiB: 393216),
        // Ddsv5 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standardddsv5/
        .init(name: "Standard_D2ds_v5", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4ds_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8ds_v5", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16ds_v5", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32ds_v5", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48ds_v5", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64ds_v5", vCPUs: 64, memoryMiB: 262144),
        .init(name: "Standard_D96ds_v5", vCPUs: 96, memoryMiB: 393216),
        // Dasv5 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddasv5/
        .init(name: "Standard_D2as_v5", vCPUs: 2, memoryMiB: 8192),
        .init(name: "Standard_D4as_v5", vCPUs: 4, memoryMiB: 16384),
        .init(name: "Standard_D8as_v5", vCPUs: 8, memoryMiB: 32768),
        .init(name: "Standard_D16as_v5", vCPUs: 16, memoryMiB: 65536),
        .init(name: "Standard_D32as_v5", vCPUs: 32, memoryMiB: 131072),
        .init(name: "Standard_D48as_v5", vCPUs: 48, memoryMiB: 196608),
        .init(name: "Standard_D64as_v5", vCPUs: 64, memoryMiB: 262144),
        .init(name: "Standard_D96as_v5", vCPUs: 96, memoryMiB: 393216),
        // Dlsv5 — https://aspire.dev/reference/api/csharp/aspire.hosting.azure.kubernetes/standarddlsv5/
        .init(name: "Standard_D2ls_v5", vCPUs: 2, memoryMiB: 4096),
        .init(name: "Standard_D4ls_v5", vCPUs: 4, memoryMiB: 8192),
        .init(name: "Standard_D8ls_v5", vCPUs: 8, memoryMiB: 16384),
        .init(name: "Standard_D16ls_v5", vCPUs: 16, memoryMiB: 32768),
        .init(name: "Standard_D32ls_v5", vCPUs: 32, memoryMiB: 65536),
        .init(name: "Standard_D48ls_v5", vCPUs: 48, memoryMiB: 98304),
        .init(name: "Standard_D64ls_v5", vCPUs: 64, memoryMiB: 131072),
        .init(name: "Standard_D96ls_v5", vCPUs: 96, memoryMiB: 196608),
    ]
}
