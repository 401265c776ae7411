import Foundation
import KilnLibvirt
import KilnMachine
import KilnSupport

/// Benchmarks print figures; they are not tests: `kiln-bench boot`, `build-vs-packer`, `vhd`, `rebuild`, `upload`, `remote`, `validate` (README, "Benchmarks").
@main
enum KilnBench {
    static func main() async {
        EmbeddedDriver.routeLogging(reexec: true)
        var arguments = Array(CommandLine.arguments.dropFirst())
        guard let command = arguments.first else {
            print("usage: kiln-bench boot [URN | --provisioning] [--runs N] [--size SIZE] | build-vs-packer [--rounds N] [--mode cold|warm|both] | vhd [--sizes 2,8] [--rounds N] [--data-mib M] | rebuild [--rounds N] [--size SIZE] | upload [--mib M] [--rounds N] | remote --connect URI [--pool NAME] [--rounds N] [--accel kvm|tcg] | validate [--resources N] [--rounds N]")
            exit(2)
        }
        arguments.removeFirst()
        func option(_ name: String) -> String? {
            guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
            let value = arguments[index + 1]
            arguments.removeSubrange(index...index + 1)
            return value
        }
        do throws(KilnError) {
            switch command {
            case "boot":
                let runs = Int(option("--runs") ?? "3") ?? 3
                let size = option("--size") ?? "Standard_D2s_v3"
                if arguments.first == "--provisioning" {
                    try await ProvisioningBootBenchmark(runs: runs, size: size).run()
                } else {
                    try await BootBenchmark(urn: arguments.first ?? "Debian:debian-12:12", runs: runs, size: size).run()
                }
            case "build-vs-packer":
                let rounds = Int(option("--rounds") ?? "2") ?? 2
                let mode = option("--mode") ?? "both"
                if mode == "cold" || mode == "both" { try await PackerBenchmark(rounds: rounds, warmSource: false).run() }
                if mode == "warm" || mode == "both" { try await PackerBenchmark(rounds: rounds, warmSource: true).run() }
            case "vhd":
                let sizes = (option("--sizes") ?? "2,8").split(separator: ",").compactMap { Int($0) }
                try await VHDBenchmark(sizesGiB: sizes, rounds: Int(option("--rounds") ?? "7") ?? 7,
                                       dataMiB: Int(option("--data-mib") ?? "1024") ?? 1024).run()
            case "rebuild":
                try await RebuildBenchmark(rounds: Int(option("--rounds") ?? "2") ?? 2, size: option("--size") ?? "Standard_D2s_v3").run()
            case "upload":
                try await UploadBenchmark(mib: Int(option("--mib") ?? "20") ?? 20, rounds: Int(option("--rounds") ?? "3") ?? 3).run()
            case "remote":
                guard let uri = option("--connect") else {
                    print("usage: kiln-bench remote --connect qemu+ssh://user@host/system [--pool NAME] [--rounds N] [--accel kvm|tcg] [--checkpoints]")
                    exit(2)
                }
                try await RemoteBenchmark(uri: uri, pool: option("--pool") ?? "kiln", rounds: Int(option("--rounds") ?? "2") ?? 2,
                                          accelerator: option("--accel").flatMap { Accelerator(rawValue: $0) },
                                          checkpoints: CommandLine.arguments.contains("--checkpoints")).run()
            case "validate":
                ValidateBenchmark(resources: Int(option("--resources") ?? "2000") ?? 2000, rounds: Int(option("--rounds") ?? "5") ?? 5).run()
            default:
                print("unknown benchmark \(command); known: boot, build-vs-packer, vhd, rebuild, upload, remote, validate")
                exit(2)
            }
        } catch {
            print("kiln-bench: error: \(error)")
            exit(1)
        }
    }
}
