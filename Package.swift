// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "kiln",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        .executable(name: "kiln-bench", targets: ["kiln-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssh", from: "0.15.1"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // C libraries, found through pkg-config; the providers name Debian's -dev packages.
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .systemLibrary(name: "CGuestfs", pkgConfig: "libguestfs", providers: [.apt(["libguestfs-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // What Swift cannot import directly: libguestfs *_BITMASK macros and OpenSSL macros.
        .target(name: "CKilnShim", dependencies: ["CGuestfs", "COpenSSL"]),

        // Layer 0
        .target(name: "KilnSupport"),
        // Layer 1
        .target(name: "KilnTemplate", dependencies: ["KilnSupport"]),
        .target(name: "KilnDigest", dependencies: ["KilnSupport", "COpenSSL", "CKilnShim"]),
        .target(name: "KilnLibvirt", dependencies: ["KilnSupport", "CLibvirt"]),
        .target(name: "KilnGuestfs", dependencies: ["KilnSupport", "CGuestfs", "CKilnShim"]),
        // The communicator protocol: an endpoint and its credentials, a communicator that waits for a login, a session
        // that runs commands and uploads files; no transport.
        .target(name: "KilnGuest", dependencies: ["KilnSupport", .product(name: "Crypto", package: "swift-crypto")]),
        // Layer 2: the two communicators, each implementing KilnGuest's protocol; neither imports the other.
        .target(name: "KilnSSH", dependencies: [
            "KilnSupport", "KilnGuest",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSH", package: "swift-nio-ssh"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // WS-Management (WinRM) client: HTTP(S) over OpenSSL, Basic and NTLMv2 with message encryption.
        .target(name: "KilnWinRM", dependencies: ["KilnSupport", "KilnGuest", "KilnDigest", "CKilnShim",
                                                  .product(name: "Crypto", package: "swift-crypto")]),
        // Layer 2
        .target(name: "KilnMachine", dependencies: ["KilnSupport", "KilnTemplate", "KilnLibvirt", "KilnGuestfs", "KilnGuest", "KilnDigest",
                                                    .product(name: "NIOCore", package: "swift-nio"),
                                                    .product(name: "NIOPosix", package: "swift-nio"),
                                                    .product(name: "NIOHTTP1", package: "swift-nio")]),
        // Layer 2: templates, runs, runOutputs, managed images and gallery versions in SQLite under the state dir.
        .target(name: "KilnStore", dependencies: ["KilnSupport", "KilnTemplate", .product(name: "GRDB", package: "GRDB.swift")]),
        // Layer 2: downloads on the host (https, http, file; proxies, size limit, cancel) and the download cache.
        .target(name: "KilnFetch", dependencies: ["KilnSupport", "KilnDigest", "CKilnShim"]),
        // Layer 2: the customizers (Packer's provisioners), one type per AIB customizer and per deprovisioner, run
        // against any KilnGuest session; they write to a BuildLog and report ProgressEvents they are handed.
        .target(name: "KilnCustomizers", dependencies: ["KilnSupport", "KilnTemplate", "KilnGuest", "KilnDigest", "KilnFetch"]),
        // Layer 2: distribution: the fixed VHD, the local managed image and gallery version from the build's disk.
        .target(name: "KilnDistribution", dependencies: ["KilnSupport", "KilnTemplate", "KilnMachine", "KilnStore"]),
        // Layer 3
        .target(name: "KilnBuild", dependencies: ["KilnSupport", "KilnTemplate", "KilnMachine", "KilnGuest", "KilnSSH", "KilnDigest", "KilnStore", "KilnWinRM",
                                                  "KilnFetch", "KilnCustomizers", "KilnDistribution"]),
        // CLI
        .target(name: "KilnCommands", dependencies: [
            "KilnSupport", "KilnTemplate", "KilnDigest", "KilnLibvirt", "KilnGuestfs", "KilnGuest", "KilnSSH", "KilnMachine", "KilnBuild", "KilnStore", "KilnWinRM", "KilnFetch",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "kiln", dependencies: ["KilnCommands"]),
        // Benchmarks: programs that print figures (README, "Benchmarks").
        .executableTarget(name: "kiln-bench", dependencies: ["KilnBuild", "KilnDistribution", "KilnMachine", "KilnGuest", "KilnSSH", "KilnSupport", "KilnLibvirt", "KilnWinRM", "KilnDigest", "KilnTemplate"]),

        .testTarget(name: "KilnTemplateTests", dependencies: ["KilnTemplate", "KilnSupport"]),
        .target(name: "KilnTestSupport", dependencies: ["KilnWinRM", "KilnSupport", "KilnMachine",
                                                        .product(name: "NIOCore", package: "swift-nio"),
                                                        .product(name: "NIOPosix", package: "swift-nio"),
                                                        .product(name: "NIOHTTP1", package: "swift-nio")],
                path: "Tests/KilnTestSupport"),
        .testTarget(name: "KilnCLITests", dependencies: ["kiln", "KilnTestSupport", "KilnSupport"]),
        .testTarget(name: "KilnVMTests", dependencies: ["kiln", "KilnTestSupport", "KilnBuild", "KilnMachine", "KilnGuest", "KilnSSH", "KilnDigest", "KilnSupport", "KilnGuestfs",
                                                    .product(name: "NIOSSH", package: "swift-nio-ssh")]),
        .testTarget(name: "KilnBuildTests", dependencies: ["KilnBuild", "KilnCustomizers", "KilnDigest", "KilnDistribution", "KilnFetch", "KilnGuest", "KilnLibvirt", "KilnSupport", "KilnMachine", "KilnTemplate", "KilnWinRM", "KilnTestSupport",
                                                     .product(name: "NIOHTTP1", package: "swift-nio")]),
        .testTarget(name: "KilnStoreTests", dependencies: ["KilnStore", "KilnSupport", "KilnTemplate"]),
        .testTarget(name: "KilnWinRMTests", dependencies: ["kiln", "KilnWinRM", "KilnDigest", "KilnGuest", "KilnSupport", "KilnTestSupport", "KilnMachine"]),
        .testTarget(name: "KilnSupportTests", dependencies: ["KilnSupport"]),
        .testTarget(name: "KilnSSHTests", dependencies: ["KilnSSH", "KilnGuest", "KilnSupport",
                                                   .product(name: "NIOCore", package: "swift-nio"),
                                                   .product(name: "NIOPosix", package: "swift-nio")]),
        .testTarget(name: "KilnSystemTests", dependencies: ["KilnDigest", "KilnLibvirt", "KilnGuestfs", "KilnMachine", "KilnSupport", "KilnTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
