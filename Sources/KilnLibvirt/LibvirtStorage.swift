import CLibvirt
import Foundation
import KilnSupport

/// A storage pool's space (virStoragePoolGetInfo), in bytes.
public struct StoragePoolSpace: Sendable, Equatable {
    public var capacityBytes: UInt64
    public var allocationBytes: UInt64
    /// What volumes may still take.
    public var availableBytes: UInt64
}

/// A storage volume for `LibvirtStoragePool.createVolume`: libvirt's `<volume>` XML, created on the pool's host
/// (qcow2 by `qemu-img create` there).
public struct StorageVolumeSpec: Sendable, Equatable {
    public enum Format: String, Sendable {
        /// vpc: a VHD, as an overlay's backing file.
        case raw, qcow2, vpc
    }

    public var name: String
    public var capacityBytes: UInt64
    public var format: Format
    /// Bytes allocated now: 0 gives a sparse raw file, the right start for an upload.
    public var allocationBytes: UInt64
    /// A qcow2 volume's backing file: a path on the pool's host (another volume's `path`) and its format.
    public var backingPath: String?
    public var backingFormat: Format?

    public init(name: String, capacityBytes: UInt64, format: Format, allocationBytes: UInt64 = 0,
                backingPath: String? = nil, backingFormat: Format? = nil) {
        self.name = name
        self.capacityBytes = capacityBytes
        self.format = format
        self.allocationBytes = allocationBytes
        self.backingPath = backingPath
        self.backingFormat = backingFormat
    }

    /// A qcow2 overlay of `capacityBytes` (at least the backing volume's virtual size) on `backing`.
    public static func overlay(name: String, on backing: LibvirtStorageVolume, backingFormat: Format, capacityBytes: UInt64) -> StorageVolumeSpec {
        StorageVolumeSpec(name: name, capacityBytes: capacityBytes, format: .qcow2, backingPath: backing.path, backingFormat: backingFormat)
    }

    public var xml: String {
        var lines = [
            "<volume>",
            "  <name>\(XMLText.escape(name))</name>",
            "  <capacity unit='bytes'>\(capacityBytes)</capacity>",
            "  <allocation unit='bytes'>\(allocationBytes)</allocation>",
            "  <target><format type='\(format.rawValue)'/></target>",
        ]
        if let backingPath {
            lines.append("  <backingStore><path>\(XMLText.escape(backingPath))</path><format type='\((backingFormat ?? .raw).rawValue)'/></backingStore>")
        }
        lines.append("</volume>")
        return lines.joined(separator: "\n")
    }
}

/// A volume's sizes, in bytes: `capacityBytes` as a guest sees the disk, `allocationBytes` used on the host,
/// `physicalBytes` the length of its file there (what a download sends).
public struct StorageVolumeSize: Sendable, Equatable {
    public var capacityBytes: UInt64
    public var allocationBytes: UInt64
    public var physicalBytes: UInt64
}

/// What a volume's file looks like on its host now: its allocation and its modification and change times as the
/// host's file system reports them (libvirt's `<timestamps>`, seconds with nanoseconds; nil where it gives none).
/// Two readings are equal only if nothing wrote to the file between them and it is the same file: one removed and
/// made again under the same name has another change time.
public struct StorageVolumeStamp: Sendable, Equatable {
    public var allocationBytes: UInt64
    public var modified: String?
    public var changed: String?

    /// Read from libvirt's volume XML.
    public init(xml: String) {
        func element(_ name: String) -> String? {
            // `<name>` or `<name unit='bytes'>`: the first element of that name, attributes skipped.
            guard let tag = xml.range(of: "<\(name)[ >]", options: .regularExpression),
                  let open = xml.range(of: ">", range: tag.lowerBound..<xml.endIndex),
                  let close = xml.range(of: "</\(name)>", range: open.upperBound..<xml.endIndex) else { return nil }
            return String(xml[open.upperBound..<close.lowerBound]).trimmingCharacters(in: .whitespaces)
        }
        allocationBytes = element("allocation").flatMap { UInt64($0) } ?? 0
        modified = element("mtime")
        changed = element("ctime")
    }
}

/// How far a volume upload or download is.
public struct TransferProgress: Sendable, Equatable {
    public var bytesDone: UInt64
    public var totalBytes: UInt64
}

extension LibvirtConnection {
    /// The storage pool `name`; `.notFound` if the host has none of that name.
    public func storagePool(named name: String) async throws(KilnError) -> LibvirtStoragePool {
        let raw = try await call("storage pool lookup \(name)") { connection -> UnsafeSendablePointer? in
            virStoragePoolLookupByName(connection.pointer, name).map(UnsafeSendablePointer.init)
        }
        return LibvirtStoragePool(pointer: raw.pointer, name: name, connection: self)
    }

    /// The directory pool `name`, running: looked up, or else defined at `path` on the host (the directory made
    /// there), set to start with the daemon, and started. An existing pool is used as it is, wherever its directory.
    public func directoryPool(named name: String, path: String) async throws(KilnError) -> LibvirtStoragePool {
        let xml = "<pool type='dir'><name>\(XMLText.escape(name))</name><target><path>\(XMLText.escape(path))</path></target></pool>"
        let raw = try await call("storage pool \(name) at \(path)") { connection -> UnsafeSendablePointer? in
            var pool = virStoragePoolLookupByName(connection.pointer, name)
            if pool == nil {
                guard let error = virGetLastError(), UInt32(bitPattern: error.pointee.code) == VIR_ERR_NO_STORAGE_POOL.rawValue else { return nil }
                guard let defined = virStoragePoolDefineXML(connection.pointer, xml, 0) else { return nil }
                pool = defined
                guard virStoragePoolBuild(defined, 0) == 0, virStoragePoolSetAutostart(defined, 1) == 0 else {
                    virStoragePoolFree(defined)
                    return nil
                }
            }
            guard let pool else { return nil }
            if virStoragePoolIsActive(pool) != 1 && virStoragePoolCreate(pool, 0) != 0 {
                virStoragePoolFree(pool)
                return nil
            }
            return UnsafeSendablePointer(pointer: pool)
        }
        return LibvirtStoragePool(pointer: raw.pointer, name: name, connection: self)
    }
}

public final class LibvirtStoragePool: @unchecked Sendable {
    private let pointer: OpaquePointer
    private let connection: LibvirtConnection
    public let name: String

    init(pointer: OpaquePointer, name: String, connection: LibvirtConnection) {
        self.pointer = pointer
        self.name = name
        self.connection = connection
    }

    deinit { virStoragePoolFree(pointer) }

    private var raw: UnsafeSendablePointer { UnsafeSendablePointer(pointer: pointer) }

    /// Capacity, allocation and free space of the pool's file system on its host, as libvirt last measured them: when
    /// the pool started or was last refreshed, adjusted by the volumes libvirt itself created or deleted since. An
    /// upload changes neither at once: libvirt refreshes the pool on a thread of its own after the stream closes, which
    /// may come after this call. For the space now, `refresh()` first.
    public func space() async throws(KilnError) -> StoragePoolSpace {
        let raw = self.raw
        return try await connection.call("storage pool \(name) info") { _ -> StoragePoolSpace? in
            var info = virStoragePoolInfo()
            guard virStoragePoolGetInfo(raw.pointer, &info) == 0 else { return nil }
            return StoragePoolSpace(capacityBytes: info.capacity, allocationBytes: info.allocation, availableBytes: info.available)
        }
    }

    /// Reads the pool's directory again: volumes made or removed on the host behind libvirt's back.
    public func refresh() async throws(KilnError) {
        let raw = self.raw
        _ = try await connection.call("storage pool \(name) refresh") { _ -> Bool? in
            virStoragePoolRefresh(raw.pointer, 0) == 0 ? true : nil
        }
    }

    /// The volume `name`; `.notFound` if the pool has none of that name.
    public func volume(named name: String) async throws(KilnError) -> LibvirtStorageVolume {
        let raw = self.raw
        let volume = try await connection.call("storage volume lookup \(name) in pool \(self.name)") { _ -> UnsafeSendablePointer? in
            virStorageVolLookupByName(raw.pointer, name).map(UnsafeSendablePointer.init)
        }
        return try await LibvirtStorageVolume.wrap(volume, connection: connection)
    }

    public func createVolume(_ spec: StorageVolumeSpec) async throws(KilnError) -> LibvirtStorageVolume {
        try await createVolume(xml: spec.xml)
    }

    /// A new volume `name` holding a copy of `original`'s bytes, of its capacity, made on the pool's host (nothing
    /// crosses the connection). `original` must be in this pool.
    public func cloneVolume(_ original: LibvirtStorageVolume, as name: String) async throws(KilnError) -> LibvirtStorageVolume {
        let raw = self.raw, from = UnsafeSendablePointer(pointer: original.pointer)
        let xml = StorageVolumeSpec(name: name, capacityBytes: try await original.size().capacityBytes, format: .raw).xml
        let volume = try await connection.call("storage volume copy of \(original.name) as \(name) in pool \(self.name)") { _ -> UnsafeSendablePointer? in
            virStorageVolCreateXMLFrom(raw.pointer, xml, from.pointer, 0).map(UnsafeSendablePointer.init)
        }
        return try await LibvirtStorageVolume.wrap(volume, connection: connection)
    }

    /// Creates a volume from libvirt's `<volume>` XML.
    public func createVolume(xml: String) async throws(KilnError) -> LibvirtStorageVolume {
        let raw = self.raw
        let volume = try await connection.call("storage volume create in pool \(name)") { _ -> UnsafeSendablePointer? in
            virStorageVolCreateXML(raw.pointer, xml, 0).map(UnsafeSendablePointer.init)
        }
        return try await LibvirtStorageVolume.wrap(volume, connection: connection)
    }
}

public final class LibvirtStorageVolume: @unchecked Sendable {
    fileprivate let pointer: OpaquePointer
    private let connection: LibvirtConnection
    public let name: String
    /// The volume's path on the pool's host (not on this machine, for a remote host): what a domain or an
    /// overlay's backing store names.
    public let path: String

    private init(pointer: OpaquePointer, name: String, path: String, connection: LibvirtConnection) {
        self.pointer = pointer
        self.name = name
        self.path = path
        self.connection = connection
    }

    deinit { virStorageVolFree(pointer) }

    /// Takes ownership of `volume` (freed here if its name and path cannot be read).
    fileprivate static func wrap(_ volume: UnsafeSendablePointer, connection: LibvirtConnection) async throws(KilnError) -> LibvirtStorageVolume {
        let names = await LibvirtConnection.onQueue(connection.queueForDomains) { () -> Result<[String], KilnError> in
            guard let name = virStorageVolGetName(volume.pointer), let path = virStorageVolGetPath(volume.pointer) else {
                return .failure(Libvirt.lastError("storage volume path"))
            }
            defer { free(path) }
            return .success([String(cString: name), String(cString: path)])
        }
        switch names {
        case .success(let names):
            return LibvirtStorageVolume(pointer: volume.pointer, name: names[0], path: names[1], connection: connection)
        case .failure(let error):
            virStorageVolFree(volume.pointer)
            throw error
        }
    }

    private var raw: UnsafeSendablePointer { UnsafeSendablePointer(pointer: pointer) }

    /// The volume's sizes, as its host reports them.
    public func size() async throws(KilnError) -> StorageVolumeSize {
        let raw = self.raw
        return try await connection.call("storage volume \(name) info") { _ -> StorageVolumeSize? in
            var info = virStorageVolInfo()
            guard virStorageVolGetInfo(raw.pointer, &info) == 0 else { return nil }
            var physical = virStorageVolInfo()
            guard virStorageVolGetInfoFlags(raw.pointer, &physical, UInt32(VIR_STORAGE_VOL_GET_PHYSICAL.rawValue)) == 0 else { return nil }
            return StorageVolumeSize(capacityBytes: info.capacity, allocationBytes: info.allocation, physicalBytes: physical.allocation)
        }
    }

    /// The volume's file as its host sees it now (libvirt reads it again for this).
    public func stamp() async throws(KilnError) -> StorageVolumeStamp {
        let raw = self.raw
        let xml = try await connection.call("storage volume \(name) description") { _ -> String? in
            guard let text = virStorageVolGetXMLDesc(raw.pointer, 0) else { return nil }
            defer { free(text) }
            return String(cString: text)
        }
        return StorageVolumeStamp(xml: xml)
    }

    /// Deletes the volume's file on the host.
    public func delete() async throws(KilnError) {
        let raw = self.raw
        _ = try await connection.call("storage volume \(name) delete") { _ -> Bool? in
            virStorageVolDelete(raw.pointer, 0) == 0 ? true : nil
        }
    }

    /// Bytes per virStreamSend / virStreamRecv call (libvirt cuts its messages into 256 KiB pieces itself).
    static let chunkBytes = 1 << 20

    /// Writes the local file `localPath` into the volume from its first byte, as bytes (a qcow2 file stays a
    /// qcow2 file), through a libvirt stream: over the connection's transport (SSH for `qemu+ssh://`), never
    /// through a path both machines see. `progress` is called after each chunk. Cancelling the task aborts the
    /// stream; the volume then holds part of the file.
    public func upload(from localPath: String, progress: @escaping @Sendable (TransferProgress) -> Void = { _ in }) async throws(KilnError) {
        let volume = raw
        let what = "upload of \(localPath) to volume \(name)"
        try await Self.transfer { buffer, cancelled throws(KilnError) in
            let fd = open(localPath, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw KilnError(.io, "cannot open \(localPath) to upload it: \(Self.errnoText())") }
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0 else { throw KilnError(.io, "cannot read the size of \(localPath): \(Self.errnoText())") }
            let total = UInt64(status.st_size)
            let stream = try Self.newStream(volume, what: what)
            defer { virStreamFree(stream) }
            guard virStorageVolUpload(volume.pointer, stream, 0, total, 0) == 0 else { throw Libvirt.lastError(what) }
            var done: UInt64 = 0
            do throws(KilnError) {
                while done < total {
                    if cancelled() { throw KilnError(.cancelled, "\(what) cancelled after \(done) of \(total) bytes") }
                    let count = read(fd, buffer, Int(min(UInt64(Self.chunkBytes), total - done)))
                    if count < 0 && errno == EINTR { continue }
                    guard count > 0 else {
                        throw KilnError(.io, count == 0 ? "\(localPath) shrank to \(done) bytes while it was uploaded (\(total) expected)"
                                                        : "cannot read \(localPath): \(Self.errnoText())")
                    }
                    var offset = 0
                    while offset < count {
                        let sent = virStreamSend(stream, (buffer + offset).assumingMemoryBound(to: CChar.self), count - offset)
                        guard sent > 0 else { throw Libvirt.lastError(what) }
                        offset += Int(sent)
                    }
                    done += UInt64(count)
                    progress(TransferProgress(bytesDone: done, totalBytes: total))
                }
                guard virStreamFinish(stream) == 0 else { throw Libvirt.lastError(what) }
            } catch {
                virStreamAbort(stream)
                throw error
            }
        }
    }

    /// Copies the volume's bytes (a qcow2 volume as its qcow2 file) into a new local file at `localPath`,
    /// through a libvirt stream. `progress` is called after each chunk. On failure or cancellation the partial
    /// local file is removed; an existing file at `localPath` is never overwritten.
    public func download(to localPath: String, progress: @escaping @Sendable (TransferProgress) -> Void = { _ in }) async throws(KilnError) {
        let volume = raw
        let what = "download of volume \(name) to \(localPath)"
        // What a whole-volume download sends: the file's length on the host.
        let total = try await size().physicalBytes
        try await Self.transfer { buffer, cancelled throws(KilnError) in
            let fd = open(localPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw KilnError(.io, "cannot create \(localPath) for the \(what): \(Self.errnoText())") }
            var complete = false
            defer {
                close(fd)
                if !complete { unlink(localPath) }
            }
            let stream = try Self.newStream(volume, what: what)
            defer { virStreamFree(stream) }
            // Offset 0, length 0: the whole volume.
            guard virStorageVolDownload(volume.pointer, stream, 0, 0, 0) == 0 else { throw Libvirt.lastError(what) }
            var done: UInt64 = 0
            do throws(KilnError) {
                while true {
                    if cancelled() { throw KilnError(.cancelled, "\(what) cancelled after \(done) bytes") }
                    let count = Int(virStreamRecv(stream, buffer.assumingMemoryBound(to: CChar.self), Self.chunkBytes))
                    if count == 0 { break }
                    guard count > 0 else { throw Libvirt.lastError(what) }
                    var offset = 0
                    while offset < count {
                        let written = write(fd, buffer + offset, count - offset)
                        if written < 0 && errno == EINTR { continue }
                        guard written > 0 else { throw KilnError(.io, "cannot write \(localPath): \(Self.errnoText())") }
                        offset += written
                    }
                    done += UInt64(count)
                    progress(TransferProgress(bytesDone: done, totalBytes: max(total, done)))
                }
                guard virStreamFinish(stream) == 0 else { throw Libvirt.lastError(what) }
            } catch {
                virStreamAbort(stream)
                throw error
            }
            guard fsync(fd) == 0 else { throw KilnError(.io, "cannot write \(localPath): \(Self.errnoText())") }
            complete = true
        }
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }

    private static func newStream(_ volume: UnsafeSendablePointer, what: String) throws(KilnError) -> OpaquePointer {
        // The volume holds a reference to its connection, so the stream's use of it needs none of its own.
        guard let connection = virStorageVolGetConnect(volume.pointer), let stream = virStreamNew(connection, 0) else {
            throw Libvirt.lastError(what)
        }
        return stream
    }

    /// Runs a blocking stream loop with a chunk buffer on a thread of its own (not the connection's queue, which
    /// other calls keep using meanwhile), libvirt's errors read on that thread. The loop asks `cancelled` between
    /// chunks.
    private static func transfer(_ body: @escaping @Sendable (_ buffer: UnsafeMutableRawPointer, _ cancelled: @Sendable () -> Bool) throws(KilnError) -> Void) async throws(KilnError) {
        let cancelled = Locked(false)
        let outcome: Result<Void, KilnError> = await withTaskCancellationHandler {
            do throws(KilnError) {
                try await Blocking.run { () throws(KilnError) in
                    let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: 16)
                    defer { buffer.deallocate() }
                    try body(buffer) { cancelled.current }
                }
                return .success(())
            } catch {
                return .failure(error)
            }
        } onCancel: {
            cancelled.withLock { $0 = true }
        }
        try outcome.get()
    }
}
