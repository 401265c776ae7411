import CLibvirt
import Dispatch
import Foundation
import KilnSupport

/// Runs libvirt's default event loop on a thread of its own. The embedded QEMU driver needs one in the process;
/// it is started once, before the first connection opens.
enum LibvirtEventLoop {
    private static let started: Bool = {
        // libvirt prints every error to stderr unless told otherwise; Kiln reports errors itself.
        virSetErrorFunc(nil) { _, _ in }
        guard virEventRegisterDefaultImpl() == 0 else { return false }
        let thread = Thread {
            while true { _ = virEventRunDefaultImpl() }
        }
        thread.name = "kiln-libvirt-events"
        thread.start()
        return true
    }()

    static func ensureStarted() throws(KilnError) {
        guard started else { throw KilnError(.external, "libvirt event loop registration failed: \(Libvirt.lastErrorMessage())") }
    }
}

/// A libvirt connection. Every call runs on the connection's serial queue, never on Swift's cooperative pool,
/// and reads libvirt's thread-local error on that same thread.
public final class LibvirtConnection: @unchecked Sendable {
    public let uri: String
    private let queue: DispatchQueue
    private var pointer: OpaquePointer?

    private init(uri: String, pointer: OpaquePointer, queue: DispatchQueue) {
        self.uri = uri
        self.pointer = pointer
        self.queue = queue
    }

    /// Opens `uri` (e.g. `qemu:///embed?root=/var/lib/kiln/r/x`, `qemu:///system`).
    public static func open(_ uri: String) async throws(KilnError) -> LibvirtConnection {
        EmbeddedDriver.routeLogging()
        try LibvirtEventLoop.ensureStarted()
        let queue = DispatchQueue(label: "kiln.libvirt.connection")
        let result: Result<UnsafeSendablePointer, KilnError> = await onQueue(queue) {
            guard let pointer = virConnectOpen(uri) else {
                return .failure(KilnError(.external, "cannot open libvirt connection \(uri): \(Libvirt.lastErrorMessage())"))
            }
            return .success(UnsafeSendablePointer(pointer: pointer))
        }
        return LibvirtConnection(uri: uri, pointer: try result.get().pointer, queue: queue)
    }

    /// Runs `body` with the raw connection on the connection's queue.
    func call<T: Sendable>(_ what: String, _ body: @escaping @Sendable (UnsafeSendablePointer) -> T?) async throws(KilnError) -> T {
        let result: Result<T, KilnError> = await LibvirtConnection.onQueue(queue) { [self] in
            guard let pointer else { return .failure(KilnError(.invalidState, "libvirt connection \(uri) is closed")) }
            guard let value = body(UnsafeSendablePointer(pointer: pointer)) else {
                return .failure(Libvirt.lastError("libvirt \(what) failed"))
            }
            return .success(value)
        }
        return try result.get()
    }

    static func onQueue<T: Sendable>(_ queue: DispatchQueue, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }
    }

    /// Starts a transient domain from XML. With `autodestroy`, libvirt kills it when this connection closes,
    /// so a crashed Kiln cannot leave a VM behind (the embedded driver does not support it; Kiln's teardown covers it).
    public func createTransientDomain(xml: String, autodestroy: Bool) async throws(KilnError) -> LibvirtDomain {
        let flags: UInt32 = autodestroy ? UInt32(VIR_DOMAIN_START_AUTODESTROY.rawValue) : 0
        let raw = try await call("domain create") { connection -> UnsafeSendablePointer? in
            virDomainCreateXML(connection.pointer, xml, flags).map(UnsafeSendablePointer.init)
        }
        return LibvirtDomain(pointer: raw.pointer, connection: self)
    }

    /// Starts a domain from a memory image written by `LibvirtDomain.save(to:)`, with `xml` in place of the saved
    /// definition (new disk paths, console and port forward; libvirt refuses a definition whose guest-visible
    /// hardware differs). The guest resumes where it was saved.
    public func restoreDomain(from path: String, xml: String, name: String) async throws(KilnError) -> LibvirtDomain {
        let raw = try await call("domain restore from \(path)") { connection -> UnsafeSendablePointer? in
            guard virDomainRestoreFlags(connection.pointer, path, xml, UInt32(VIR_DOMAIN_SAVE_RUNNING.rawValue)) == 0 else { return nil }
            return virDomainLookupByName(connection.pointer, name).map(UnsafeSendablePointer.init)
        }
        return LibvirtDomain(pointer: raw.pointer, connection: self)
    }

    /// The domain definition stored in a memory image.
    public func savedDomainXML(_ path: String) async throws(KilnError) -> String {
        try await call("read saved domain \(path)") { connection -> String? in
            guard let text = virDomainSaveImageGetXMLDesc(connection.pointer, path, 0) else { return nil }
            defer { free(text) }
            return String(cString: text)
        }
    }

    /// Names of running domains.
    public func runningDomainNames() async throws(KilnError) -> [String] {
        try await call("list domains") { connection -> [String]? in
            var domains: UnsafeMutablePointer<OpaquePointer?>?
            let count = virConnectListAllDomains(connection.pointer, &domains, UInt32(VIR_CONNECT_LIST_DOMAINS_ACTIVE.rawValue))
            guard count >= 0, let domains else { return count == 0 ? [] : nil }
            defer { free(domains) }
            var names: [String] = []
            for index in 0..<Int(count) {
                guard let domain = domains[index] else { continue }
                if let name = virDomainGetName(domain) { names.append(String(cString: name)) }
                virDomainFree(domain)
            }
            return names
        }
    }

    /// Opens `uri`, runs `body` with the connection, and closes it whether `body` returns or throws.
    public static func with<T: Sendable>(_ uri: String, _ body: (LibvirtConnection) async throws(KilnError) -> T) async throws(KilnError) -> T {
        let connection = try await open(uri)
        do {
            let value = try await body(connection)
            await connection.close()
            return value
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Closes the connection. Idempotent. Autodestroy domains die with it.
    public func close() async {
        await LibvirtConnection.onQueue(queue) { [self] in
            if let pointer { virConnectClose(pointer) }
            pointer = nil
        }
    }

    var queueForDomains: DispatchQueue { queue }
}

/// Carries a libvirt pointer across the queue hop; libvirt objects are thread-safe.
struct UnsafeSendablePointer: @unchecked Sendable {
    let pointer: OpaquePointer
}

public enum DomainState: Sendable, Equatable, CustomStringConvertible {
    case running, blocked, paused, shuttingDown, shutOff, crashed, suspended, unknown

    init(_ raw: Int32) {
        switch UInt32(raw) {
        case VIR_DOMAIN_RUNNING.rawValue: self = .running
        case VIR_DOMAIN_BLOCKED.rawValue: self = .blocked
        case VIR_DOMAIN_PAUSED.rawValue: self = .paused
        case VIR_DOMAIN_SHUTDOWN.rawValue: self = .shuttingDown
        case VIR_DOMAIN_SHUTOFF.rawValue: self = .shutOff
        case VIR_DOMAIN_CRASHED.rawValue: self = .crashed
        case VIR_DOMAIN_PMSUSPENDED.rawValue: self = .suspended
        default: self = .unknown
        }
    }

    /// True while the guest's QEMU process exists.
    public var isActive: Bool { self != .shutOff && self != .crashed }

    public var description: String {
        switch self {
        case .running: "running"
        case .blocked: "blocked"
        case .paused: "paused"
        case .shuttingDown: "shutting down"
        case .shutOff: "shut off"
        case .crashed: "crashed"
        case .suspended: "suspended"
        case .unknown: "unknown"
        }
    }
}

public final class LibvirtDomain: @unchecked Sendable {
    private let pointer: OpaquePointer
    private let connection: LibvirtConnection
    public let name: String

    init(pointer: OpaquePointer, connection: LibvirtConnection) {
        self.pointer = pointer
        self.connection = connection
        name = virDomainGetName(pointer).map { String(cString: $0) } ?? "?"
    }

    deinit { virDomainFree(pointer) }

    private var raw: UnsafeSendablePointer { UnsafeSendablePointer(pointer: pointer) }

    /// The domain's state. A transient domain that has stopped no longer exists: that reads as `.shutOff`.
    public func state() async -> DomainState {
        let raw = self.raw
        return (try? await connection.call("domain state") { _ -> DomainState? in
            var state: Int32 = 0
            var reason: Int32 = 0
            guard virDomainGetState(raw.pointer, &state, &reason, 0) == 0 else { return .shutOff }
            return DomainState(state)
        }) ?? .shutOff
    }

    /// Asks the guest to power off (ACPI). The guest may ignore it.
    public func requestShutdown() async throws(KilnError) {
        let raw = self.raw
        _ = try await connection.call("domain shutdown") { _ -> Bool? in
            virDomainShutdown(raw.pointer) == 0 ? true : nil
        }
    }

    /// Writes the guest's memory and device state to `path` and stops the domain; `LibvirtConnection.restoreDomain`
    /// resumes it. The disks are left consistent (QEMU flushes them before it exits).
    public func save(to path: String) async throws(KilnError) {
        let raw = self.raw
        _ = try await connection.call("domain save to \(path)") { _ -> Bool? in
            virDomainSaveFlags(raw.pointer, path, nil, 0) == 0 ? true : nil
        }
    }

    /// Takes an external snapshot described by `xml` (`<domainsnapshot>`): with a `<memory snapshot='external'>`
    /// element the guest pauses while its memory is written (in the same format as `save(to:)`), its disks switch
    /// to new overlays, and it runs on. libvirt keeps no snapshot metadata: the files are the snapshot.
    public func createExternalSnapshot(xml: String) async throws(KilnError) {
        let raw = self.raw
        let flags = UInt32(VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA.rawValue) | UInt32(VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC.rawValue)
        _ = try await connection.call("snapshot") { _ -> Bool? in
            guard let snapshot = virDomainSnapshotCreateXML(raw.pointer, xml, flags) else { return nil }
            virDomainSnapshotFree(snapshot)
            return true
        }
    }

    /// The domain's UUID, as libvirt formats it.
    public func uuidString() async throws(KilnError) -> String {
        let raw = self.raw
        return try await connection.call("domain UUID") { _ -> String? in
            var buffer = [CChar](repeating: 0, count: Int(VIR_UUID_STRING_BUFLEN))
            guard virDomainGetUUIDString(raw.pointer, &buffer) == 0 else { return nil }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// Forces the domain off. Succeeds if it is already gone.
    public func destroy() async {
        let raw = self.raw
        _ = try? await connection.call("domain destroy") { _ -> Bool? in
            _ = virDomainDestroy(raw.pointer)
            return true
        }
    }
}
