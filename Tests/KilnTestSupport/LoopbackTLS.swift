import Foundation
import KilnMachine
import KilnSupport

/// socat terminating TLS on a free port of 127.0.0.1, with a self-signed certificate for IP 127.0.0.1 made now,
/// in front of a plain port (the fetcher's HTTPS tests, the WinRM client over HTTPS).
public final class LoopbackTLS: @unchecked Sendable {
    public private(set) var port = 0
    public let certificatePath: String
    private let directory: String
    private var process = Process()

    /// Makes the certificate and starts socat on a thread of its own (`OwnThread`): both wait on child processes.
    public static func start(forwardingTo target: Int) async throws -> LoopbackTLS {
        try await OwnThread.run { try LoopbackTLS(forwardingTo: target) }
    }

    /// Starts socat on a port the kernel reports free and waits until it accepts connections. A socat that exits
    /// (the port was taken in between) is started again on another port; one that never listens fails the test.
    private init(forwardingTo target: Int) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        certificatePath = directory + "/cert.pem"
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                             "-days", "1", "-keyout", directory + "/key.pem", "-out", certificatePath]
        openssl.standardOutput = FileHandle.nullDevice
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        for _ in 0..<5 {
            port = try PortAllocator.reserve(nil)
            process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
            process.arguments = ["OPENSSL-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork,cert=\(certificatePath),key=\(directory)/key.pem,verify=0",
                                 "TCP:127.0.0.1:\(target)"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            // Generous: the VM tests load the machine while this runs.
            let deadline = Date().addingTimeInterval(30)
            while process.isRunning && Date() < deadline {
                if PortAllocator.isListening(port) { return }
                Thread.sleep(forTimeInterval: 0.1)
            }
            if process.isRunning { break }
        }
        stop()
        throw KilnError(.timeout, "socat did not listen on 127.0.0.1:\(port)")
    }

    public func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
