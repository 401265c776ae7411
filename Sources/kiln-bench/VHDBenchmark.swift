import Foundation
import KilnDistribution
import KilnSupport

/// Kiln's VHD export (VHDWriter: qemu-img convert, then the footer checked as Azure checks it, then an atomic
/// rename) against plain `qemu-img convert -O vpc -o subformat=fixed,force_size`, on the same qcow2 disks of several
/// virtual sizes holding the same data, timed alternately. Prints both, the ratio, and the output's size on disk.
struct VHDBenchmark {
    var sizesGiB: [Int]
    var rounds: Int
    /// Data written into each disk, spread over its first half.
    var dataMiB: Int

    func run() async throws(KilnError) {
        let work = try PrivateDirectory.makeTemporary(prefix: "kiln-bench-vhd-")
        defer { try? FileManager.default.removeItem(atPath: work) }
        print("VHD export benchmark: \(dataMiB) MiB of data per disk, \(rounds) rounds; median seconds, median per-round ratio")
        print("virtual  kiln     qemu-img  ratio  vhd on disk")
        for size in sizesGiB {
            let disk = work + "/disk-\(size)G.qcow2"
            try await makeDisk(disk, sizeGiB: size)
            var kilnTimes: [Double] = []
            var qemuTimes: [Double] = []
            var allocated: UInt64 = 0
            for round in 0..<rounds {
                let kilnOutput = work + "/kiln.vhd", qemuOutput = work + "/qemu.vhd"
                let clock = ContinuousClock()
                func timeKiln() async throws(KilnError) -> Double {
                    let start = clock.now
                    try await VHDWriter.write(disk: disk, format: "qcow2", virtualSizeBytes: UInt64(size) << 30, to: kilnOutput)
                    return (clock.now - start).inSeconds
                }
                func timeQemu() async throws(KilnError) -> Double {
                    let start = clock.now
                    try await Subprocess.check("qemu-img", ["convert", "-q", "-f", "qcow2", "-O", "vpc", "-o", "subformat=fixed,force_size", disk, qemuOutput],
                                               timeout: .seconds(3600))
                    return (clock.now - start).inSeconds
                }
                // Alternate which goes first, so neither always gets the warmer cache.
                if round % 2 == 0 {
                    kilnTimes.append(try await timeKiln())
                    qemuTimes.append(try await timeQemu())
                } else {
                    qemuTimes.append(try await timeQemu())
                    kilnTimes.append(try await timeKiln())
                }
                var info = stat()
                if stat(kilnOutput, &info) == 0 { allocated = UInt64(info.st_blocks) * 512 }
                try? FileManager.default.removeItem(atPath: kilnOutput)
                try? FileManager.default.removeItem(atPath: qemuOutput)
            }
            let kiln = median(kilnTimes), qemu = median(qemuTimes)
            // The ratio is the median of each round's ratio: the two runs of a round see the same machine state.
            let ratio = median(zip(kilnTimes, qemuTimes).map { $0 / $1 })
            print(String(format: "%4d GiB  %6.2fs  %6.2fs   %.2f   %d MiB   (fastest: %.2fs vs %.2fs)", size, kiln, qemu, ratio,
                         allocated >> 20, kilnTimes.min() ?? 0, qemuTimes.min() ?? 0))
            try? FileManager.default.removeItem(atPath: disk)
        }
    }

    /// A qcow2 disk of `sizeGiB` with `dataMiB` of non-zero data in 64 MiB extents spread over its first half.
    private func makeDisk(_ path: String, sizeGiB: Int) async throws(KilnError) {
        try await Subprocess.check("qemu-img", ["create", "-q", "-f", "qcow2", path, "\(sizeGiB)G"])
        let extents = dataMiB / 64
        let stride = (UInt64(sizeGiB) << 30) / 2 / UInt64(extents)
        var commands: [String] = []
        for index in 0..<extents {
            commands += ["-c", "write -P \(0x11 + index) \(UInt64(index) * stride) 64M"]
        }
        try await Subprocess.check("qemu-io", ["-f", "qcow2"] + commands + [path], timeout: .seconds(600))
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }
}
