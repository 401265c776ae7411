import Foundation
import KilnSupport

/// A bootable source disk and what Kiln knows about it.
public struct SourceImage: Sendable, Equatable {
    public var path: String
    public var format: String
    public var virtualSizeBytes: UInt64
    public var firmware: Firmware
    /// "Linux" or "Windows", when known.
    public var osType: String?
    /// Whether the image runs cloud-init at boot; nil when unknown (Kiln then inspects it).
    public var hasCloudInit: Bool?
    /// How a Linux image gets its build user, when known (decided at import); nil: from `hasCloudInit`, or
    /// inspected at boot.
    public var provisioning: LinuxProvisioning?
    /// For an image the Azure Linux agent provisions: the layer holding the agent's leases, made at import; builds
    /// boot overlays on it.
    public var leaseLayer: LeaseLayer?
    /// `Publisher:Offer:Sku:Version` with the version resolved, for catalog and imported images.
    public var urn: String?
    /// The image's version (a platform image's resolved version, a gallery version), for versioning scheme Source.
    public var version: String?
    /// What the build records as its source: the resolved URN or resource ID; the file path otherwise.
    public var reference: String?

    public init(path: String, format: String, virtualSizeBytes: UInt64, firmware: Firmware, osType: String?, hasCloudInit: Bool?,
                provisioning: LinuxProvisioning? = nil, urn: String?, version: String? = nil, reference: String? = nil) {
        self.provisioning = provisioning
        self.path = path
        self.format = format
        self.virtualSizeBytes = virtualSizeBytes
        self.firmware = firmware
        self.osType = osType
        self.hasCloudInit = hasCloudInit
        self.urn = urn
        self.version = version
        self.reference = reference
    }

    public var displayName: String { reference ?? urn ?? path }
}

/// One image in the catalog or the local store, as `kiln image list` shows it.
public struct ImageRecord: Sendable, Codable, Equatable {
    public var publisher: String
    public var offer: String
    public var sku: String
    public var version: String
    public var path: String
    public var format: String
    public var firmware: Firmware
    public var osType: String?
    public var hasCloudInit: Bool?
    /// Imported Linux images: decided once from inspection (older records have none).
    public var provisioning: LinuxProvisioning?
    /// Imported images the Azure Linux agent provisions: the lease layer made at import (`LeaseLayer`).
    public var leaseLayer: LeaseLayer?
    public var origin: String
    public var virtualSizeBytes: UInt64

    public var urn: String { "\(publisher):\(offer):\(sku):\(version)" }

    public var source: SourceImage {
        var image = SourceImage(path: path, format: format, virtualSizeBytes: virtualSizeBytes, firmware: firmware, osType: osType,
                                hasCloudInit: hasCloudInit, provisioning: provisioning, urn: urn, version: version)
        image.leaseLayer = leaseLayer
        return image
    }
}

/// Versions like 0.20261126.1622 or 1.2.3, compared number by number.
func compareVersions(_ lhs: String, _ rhs: String) -> Bool {
    let left = lhs.split(separator: ".").map { Int($0) ?? 0 }
    let right = rhs.split(separator: ".").map { Int($0) ?? 0 }
    for index in 0..<max(left.count, right.count) {
        let a = index < left.count ? left[index] : 0
        let b = index < right.count ? right[index] : 0
        if a != b { return a < b }
    }
    return false
}

/// The reference catalog (images/catalog.json: URNs → recipes built by scripts/build-image) plus images users
/// imported with `kiln image import`.
public struct ImageCatalog: Sendable {
    public struct Entry: Sendable, Codable {
        public var publisher: String
        public var offer: String
        public var sku: String
        public var recipe: String
        public var firmware: Firmware
        public var hyperVGeneration: String?
        public var osType: String?
    }

    struct Manifest: Codable {
        var name: String
        var version: String
        var firmware: Firmware
        var osType: String?
        var virtualSizeBytes: UInt64?
        var format: String?
    }

    public var catalogPath: String?
    public var entries: [Entry]
    public var buildCacheDirectory: String
    public var importedDirectory: String

    /// Finds images/catalog.json: `KILN_CATALOG`, else walking up from the executable's real location.
    public static func locate(state: StateDirectory, environment: [String: String] = ProcessInfo.processInfo.environment) throws(KilnError) -> ImageCatalog {
        let catalogPath = findCatalog(executable: executablePath, environment: environment)
        var entries: [Entry] = []
        if let catalogPath {
            guard let data = FileManager.default.contents(atPath: catalogPath) else {
                throw KilnError(.io, "cannot read the image catalog \(catalogPath)")
            }
            struct File: Codable { var images: [Entry] }
            do {
                entries = try JSONDecoder().decode(File.self, from: data).images
            } catch {
                throw KilnError(.invalidArgument, "the image catalog \(catalogPath) is not valid: \(error)")
            }
        }
        let cache = environment["KILN_IMAGE_CACHE"] ?? (KilnCache.path(environment: environment) + "/images")
        return ImageCatalog(catalogPath: catalogPath, entries: entries, buildCacheDirectory: cache,
                            importedDirectory: state.imagesPath + "/imported")
    }

    /// The catalog file: the one `KILN_CATALOG` names, else the first `images/catalog.json` in the directories
    /// above the executable, symbolic links resolved (a checkout's `.build/debug/kiln`, or a link to it on PATH).
    /// Never the working directory: a catalog there names the `scripts/build-image` Kiln would run, and a
    /// directory someone else controls (a download, a shared folder) must not choose what runs.
    static func findCatalog(executable: String, environment: [String: String]) -> String? {
        if let explicit = environment["KILN_CATALOG"], !explicit.isEmpty { return explicit }
        var directory = URL(fileURLWithPath: executable).resolvingSymlinksInPath().deletingLastPathComponent()
        while directory.path != "/" && !directory.path.isEmpty {
            let candidate = directory.appendingPathComponent("images/catalog.json").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            directory.deleteLastPathComponent()
        }
        return nil
    }

    /// This process's executable file, from `/proc/self/exe` (argv[0] may be a bare name found on PATH, or relative
    /// to a working directory since left).
    static var executablePath: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? Bundle.main.executablePath ?? "/"
    }

    /// `scripts/build-image` of the checkout the catalog is in, when it is there and executable.
    public var buildScript: String? {
        guard let catalogPath else { return nil }
        let script = URL(fileURLWithPath: catalogPath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("scripts/build-image").path
        return FileManager.default.isExecutableFile(atPath: script) ? script : nil
    }

    /// Every image that can be booted now: built catalog images and imported ones.
    public func records() -> [ImageRecord] {
        var records: [ImageRecord] = []
        for entry in entries {
            let directory = buildCacheDirectory + "/" + entry.recipe
            for hash in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
                let folder = directory + "/" + hash
                guard let data = FileManager.default.contents(atPath: folder + "/manifest.json"),
                      let manifest = try? JSONDecoder().decode(Manifest.self, from: data),
                      FileManager.default.fileExists(atPath: folder + "/disk.qcow2") else { continue }
                records.append(ImageRecord(publisher: entry.publisher, offer: entry.offer, sku: entry.sku, version: manifest.version,
                                           path: folder + "/disk.qcow2", format: manifest.format ?? "qcow2", firmware: manifest.firmware,
                                           osType: manifest.osType ?? entry.osType, hasCloudInit: true,
                                           origin: "catalog recipe \(entry.recipe)", virtualSizeBytes: manifest.virtualSizeBytes ?? 0))
            }
        }
        for file in (try? FileManager.default.contentsOfDirectory(atPath: importedDirectory)) ?? [] where file.hasSuffix(".json") {
            guard let data = FileManager.default.contents(atPath: importedDirectory + "/" + file),
                  let record = try? JSONDecoder().decode(ImageRecord.self, from: data) else { continue }
            records.append(record)
        }
        return records.sorted { ($0.publisher, $0.offer, $0.sku) == ($1.publisher, $1.offer, $1.sku) ? compareVersions($0.version, $1.version) : $0.urn < $1.urn }
    }

    /// Resolves a PlatformImage reference. `latest` picks the newest version. A catalog image that has not been
    /// built yet is built now with scripts/build-image (a few minutes, once).
    public func resolve(publisher: String, offer: String, sku: String, version: String, allowBuild: Bool = true,
                        progress: @Sendable (String) -> Void = { _ in }) async throws(KilnError) -> SourceImage {
        func matching() -> [ImageRecord] {
            records().filter {
                $0.publisher.lowercased() == publisher.lowercased() && $0.offer.lowercased() == offer.lowercased()
                    && $0.sku.lowercased() == sku.lowercased()
            }
        }
        var candidates = matching()
        let entry = entries.first {
            $0.publisher.lowercased() == publisher.lowercased() && $0.offer.lowercased() == offer.lowercased() && $0.sku.lowercased() == sku.lowercased()
        }
        if candidates.isEmpty, let entry {
            guard allowBuild else {
                throw KilnError(.notFound, "the source image \(entry.recipe) (\(publisher):\(offer):\(sku)) is not built, and building it needs the Debian mirror; run kiln fetch with this template (or scripts/build-image \(entry.recipe)) while online")
            }
            try await build(entry, progress: progress)
            candidates = matching()
        }
        let urn = "\(publisher):\(offer):\(sku):\(version)"
        guard !candidates.isEmpty else {
            let known = Set(records().map { "\($0.publisher):\($0.offer):\($0.sku)" } + entries.map { "\($0.publisher):\($0.offer):\($0.sku)" })
            let noCatalog = catalogPath == nil ? "; no images/catalog.json was found above the executable \(ImageCatalog.executablePath), KILN_CATALOG can name one" : ""
            throw KilnError(.notFound, "expected a source image in the catalog or the local store, found none for \(urn) (available: \(known.sorted().joined(separator: ", ")); add one with kiln image import FILE --urn \(urn)\(noCatalog))")
        }
        if version.lowercased() == "latest", let newest = candidates.max(by: { compareVersions($0.version, $1.version) }) {
            return try await checked(newest)
        }
        guard let exact = candidates.first(where: { $0.version == version }) else {
            throw KilnError(.notFound, "expected version \(version) of \(publisher):\(offer):\(sku), found only \(candidates.map(\.version).joined(separator: ", "))")
        }
        return try await checked(exact)
    }

    /// An imported image is checked again before use: its file is its owner's, and a backing file or external data
    /// file added since the import would be read by the guest.
    private func checked(_ record: ImageRecord) async throws(KilnError) -> SourceImage {
        if record.origin == "imported" {
            try await DiskImageProbe.requireSelfContained(record.path, format: record.format)
        }
        return record.source
    }

    func build(_ entry: Entry, progress: @Sendable (String) -> Void) async throws(KilnError) {
        guard let script = buildScript else {
            throw KilnError(.notFound, "the source image \(entry.recipe) is not built and scripts/build-image was not found beside \(catalogPath ?? "the catalog")")
        }
        progress("building source image \(entry.recipe) with \(script) (first use only)")
        let result = try await Subprocess.run(script, [entry.recipe], timeout: .seconds(3600),
                                              environment: ["KILN_IMAGE_CACHE": buildCacheDirectory])
        guard result.succeeded else {
            throw KilnError(.external, "building source image \(entry.recipe) failed (exit \(result.status)): \(result.stderrText.suffix(2000))")
        }
    }

    /// Resolves what a user typed: `Publisher:Offer:Sku[:Version]` or a disk image file.
    public func resolve(reference: String, progress: @Sendable (String) -> Void = { _ in }) async throws(KilnError) -> SourceImage {
        let parts = reference.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        if !reference.contains("/"), parts.count == 3 || parts.count == 4, parts.allSatisfy({ !$0.isEmpty }) {
            return try await resolve(publisher: parts[0], offer: parts[1], sku: parts[2], version: parts.count == 4 ? parts[3] : "latest",
                                     progress: progress)
        }
        let path = reference.hasPrefix("/") ? reference : FileManager.default.currentDirectoryPath + "/" + reference
        let info = try await DiskImageProbe.inspect(path)
        return SourceImage(path: path, format: info.format, virtualSizeBytes: info.virtualSizeBytes, firmware: info.firmware,
                           osType: nil, hasCloudInit: nil, urn: nil)
    }

    /// Registers a user's qcow2/VHD under a URN. The file stays where it is and is never written.
    public func importImage(_ file: String, urn: String, osType: String?, hasCloudInit: Bool?,
                            provisioning: LinuxProvisioning? = nil, leaseLayer: LeaseLayer? = nil) async throws(KilnError) -> ImageRecord {
        let parts = try requireNewURN(urn)
        let path = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
        let info = try await DiskImageProbe.inspect(path)
        let record = ImageRecord(publisher: parts[0], offer: parts[1], sku: parts[2], version: parts[3], path: path, format: info.format,
                                 firmware: info.firmware, osType: osType, hasCloudInit: hasCloudInit, provisioning: provisioning,
                                 leaseLayer: leaseLayer, origin: "imported", virtualSizeBytes: info.virtualSizeBytes)
        do {
            try FileManager.default.createDirectory(atPath: importedDirectory, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let target = importedDirectory + "/" + ImageCatalog.fileName(for: urn)
            try AtomicFile.write(try encoder.encode(record), to: target)
        } catch {
            throw KilnError(.io, "cannot record the imported image: \(error.localizedDescription)")
        }
        return record
    }

    /// A well-formed URN no image has yet, split into its four parts.
    @discardableResult
    public func requireNewURN(_ urn: String) throws(KilnError) -> [String] {
        let parts = urn.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, parts.allSatisfy({ !$0.isEmpty && !$0.contains("/") }) else {
            throw KilnError(.invalidArgument, "expected --urn Publisher:Offer:Sku:Version, found \"\(urn)\"")
        }
        if records().contains(where: { $0.urn.lowercased() == urn.lowercased() }) {
            throw KilnError(.invalidArgument, "an image with URN \(urn) already exists; remove it first with kiln image remove \(urn)")
        }
        return parts
    }

    /// Where the import of `urn` keeps its lease layer (`LeaseLayer`), beside the image's record.
    public func leaseLayerPath(for urn: String) throws(KilnError) -> String {
        do {
            try FileManager.default.createDirectory(atPath: importedDirectory, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.io, "cannot create \(importedDirectory): \(error.localizedDescription)")
        }
        return importedDirectory + "/" + ImageCatalog.fileName(for: urn).replacingOccurrences(of: ".json", with: ".lease-layer.qcow2")
    }

    /// Forgets an imported image (the disk file itself is left alone; its lease layer goes with the record).
    public func removeImported(urn: String) throws(KilnError) {
        let target = importedDirectory + "/" + ImageCatalog.fileName(for: urn)
        guard FileManager.default.fileExists(atPath: target) else {
            throw KilnError(.notFound, "expected an imported image \(urn), found none (kiln image list shows what exists)")
        }
        if let data = FileManager.default.contents(atPath: target), let record = try? JSONDecoder().decode(ImageRecord.self, from: data),
           let layer = record.leaseLayer {
            try? FileManager.default.removeItem(atPath: layer.path)
        }
        try? FileManager.default.removeItem(atPath: target)
    }

    static func fileName(for urn: String) -> String {
        urn.lowercased().replacingOccurrences(of: ":", with: "_") + ".json"
    }
}
